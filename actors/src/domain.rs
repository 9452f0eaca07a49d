//! The pure domain: aggregates (`decide`, `evolve`), their input types and
//! events, and the ids that reach subjects. Nothing here awaits or knows NATS,
//! actors or GraphQL.

/// A `Debug` that prints only the type's name, for input types that hold
/// personal data or secrets: they cannot reach a log by accident. (Defined
/// before the modules so that they can use it.)
macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

pub mod access;
pub mod access_token;
pub mod account;
pub mod aggregate;
pub mod backup;
pub mod challenge;
pub mod ids;
pub mod manifest;
pub mod push;
pub mod record;
pub mod session;
pub mod tenant;
pub mod tenant_modules;
pub mod webhook;

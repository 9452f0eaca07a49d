//! The pure domain: aggregates (`decide`, `evolve`), their input types and
//! events, and the ids that reach subjects. Nothing here awaits or knows NATS,
//! actors or GraphQL.

pub mod account;
pub mod aggregate;
pub mod challenge;
pub mod ids;
pub mod session;
pub mod tenant;

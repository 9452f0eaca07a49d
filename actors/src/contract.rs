//! The public contract of the event log: one JSON Schema per event type, generated
//! from the Rust types so it cannot drift (a test compares it with `schemas/events/`).

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::domain::access::{Access, AccessEvent};
use crate::domain::account::{
    Account, AccountEvent, EMAIL_CLAIM, EMAIL_RELEASED, EMAIL_RELEASED_VERSION, EMAIL_RESERVED, EMAIL_RESERVED_VERSION,
    EmailReleased, EmailReserved,
};
use crate::domain::aggregate::{Aggregate, UpcastError, upcast_to_current};
use crate::domain::backup::{BackupEvent, Backups};
use crate::domain::push::{Push, PushEvent};
use crate::domain::record::{RecordAggregate, RecordEvent, UNIQUE_CLAIM, VALUE_CLAIMED, VALUE_RELEASED, ValueClaim};
use crate::domain::tenant::{Tenant, TenantEvent};
use crate::domain::tenant_modules::{Modules, ModulesEvent};
use crate::domain::webhook::{WebhookEvent, Webhooks};
use crate::store::event_store::Envelope;

/// The data of a stored envelope in its event type's current shape, whatever
/// the aggregate: what a reader of the whole log (the projector) decodes.
/// Data already in its current shape is borrowed, not copied: that is every
/// event until a type's shape changes.
pub fn current_data(env: &Envelope) -> Result<Cow<'_, Value>, UpcastError> {
    let (t, v) = (env.event_type.as_str(), env.schema_version);
    let current = match env.aggregate.as_str() {
        a if a == Account::NAME => Account::event_version(t),
        a if a == Tenant::NAME => Tenant::event_version(t),
        a if a == Access::NAME => Access::event_version(t),
        EMAIL_CLAIM if t == EMAIL_RELEASED => EMAIL_RELEASED_VERSION,
        EMAIL_CLAIM => EMAIL_RESERVED_VERSION,
        _ => 1,
    };
    if v == current {
        return Ok(Cow::Borrowed(&env.data));
    }
    let d = env.data.clone();
    match env.aggregate.as_str() {
        a if a == Account::NAME => upcast_to_current::<Account>(t, v, d).map(Cow::Owned),
        a if a == Tenant::NAME => upcast_to_current::<Tenant>(t, v, d).map(Cow::Owned),
        a if a == Access::NAME => upcast_to_current::<Access>(t, v, d).map(Cow::Owned),
        _ if v < current => Err(UpcastError::Missing { event_type: t.to_owned(), version: v }),
        _ => Err(UpcastError::Newer { event_type: t.to_owned(), version: v, current }),
    }
}

/// Splits a tagged enum's schema into `(event type, data schema)` pairs.
fn variants(enum_schema: Value) -> Vec<(String, Value)> {
    let defs = enum_schema.get("$defs").cloned().unwrap_or(json!({}));
    let mut out = Vec::new();
    for v in enum_schema["oneOf"].as_array().cloned().unwrap_or_default() {
        let name = v["properties"]["type"]["const"].as_str().expect("tagged variants have a const type").to_owned();
        let mut data = v["properties"]["data"].clone();
        if let Some(r) = data.get("$ref").and_then(Value::as_str) {
            let key = r.trim_start_matches("#/$defs/");
            data = defs[key].clone();
        }
        let description = v.get("description").cloned();
        if let (Some(d), Some(obj)) = (description, data.as_object_mut()) {
            obj.insert("description".into(), d);
        }
        out.push((name, inline_defs(data, &defs)));
    }
    out
}

/// Inlines references to shared definitions (such as `Sealed`) so each file stands alone.
fn inline_defs(v: Value, defs: &Value) -> Value {
    match v {
        Value::Object(mut m) => {
            if let Some(Value::String(r)) = m.get("$ref").cloned() {
                let key = r.trim_start_matches("#/$defs/");
                let mut target = inline_defs(defs[key].clone(), defs);
                if let (Some(t), Some(d)) = (target.as_object_mut(), m.remove("description")) {
                    t.insert("description".into(), d);
                }
                return target;
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, inline_defs(v, defs))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| inline_defs(v, defs)).collect()),
        other => other,
    }
}

fn to_value(s: schemars::Schema) -> Value {
    serde_json::to_value(s).expect("schemas serialise")
}

/// Every event type with the aggregate it belongs to and the JSON Schema of its
/// whole envelope, sorted by type.
pub fn event_schemas() -> Vec<(String, &'static str, Value)> {
    let mut all: Vec<(String, &'static str, u32, Value)> = Vec::new();
    for (name, data) in variants(to_value(schemars::schema_for!(AccountEvent))) {
        all.push((name.clone(), Account::NAME, Account::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(TenantEvent))) {
        all.push((name.clone(), Tenant::NAME, Tenant::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(AccessEvent))) {
        all.push((name.clone(), Access::NAME, Access::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(BackupEvent))) {
        all.push((name.clone(), Backups::NAME, Backups::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(ModulesEvent))) {
        all.push((name.clone(), Modules::NAME, Modules::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(RecordEvent))) {
        all.push((name.clone(), RecordAggregate::NAME, RecordAggregate::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(PushEvent))) {
        all.push((name.clone(), Push::NAME, Push::event_version(&name), data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(WebhookEvent))) {
        all.push((name.clone(), Webhooks::NAME, Webhooks::event_version(&name), data));
    }
    for (name, what) in [
        (
            VALUE_CLAIMED,
            "The claim that makes a value of a module's unique field unique in its tenant; its subject token is a keyed hash of the module, subscription, version, table, field and value.",
        ),
        (
            VALUE_RELEASED,
            "The end of a unique value's claim (the record changed the value or was deleted): the value is free again.",
        ),
    ] {
        let mut schema = to_value(schemars::schema_for!(ValueClaim));
        if let Some(o) = schema.as_object_mut() {
            o.remove("$schema");
            o.remove("title");
            o.insert("description".into(), json!(what));
        }
        all.push((name.to_owned(), UNIQUE_CLAIM, 1, schema));
    }
    let mut claim = to_value(schemars::schema_for!(EmailReserved));
    if let Some(o) = claim.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        o.insert(
            "description".into(),
            json!(
                "The claim that makes an email unique in its tenant; its subject token is a keyed hash of the email."
            ),
        );
    }
    all.push((EMAIL_RESERVED.to_owned(), EMAIL_CLAIM, EMAIL_RESERVED_VERSION, claim));
    let mut release = to_value(schemars::schema_for!(EmailReleased));
    if let Some(o) = release.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        o.insert(
            "description".into(),
            json!("The end of an email's claim (an email change or an erased account): the email is free again."),
        );
    }
    all.push((EMAIL_RELEASED.to_owned(), EMAIL_CLAIM, EMAIL_RELEASED_VERSION, release));
    all.sort_by(|a, b| a.0.cmp(&b.0));

    let envelope = to_value(schemars::schema_for!(Envelope));
    all.into_iter()
        .map(|(name, aggregate, version, data)| {
            let mut e = envelope.clone();
            e["$id"] = json!(format!("https://canopy.dev/schemas/events/{name}.json"));
            e["title"] = json!(name);
            e["description"] = data.get("description").cloned().unwrap_or(json!(name));
            e["properties"]["type"] = json!({ "const": name });
            e["properties"]["aggregate"] = json!({ "const": aggregate });
            // The version of this type's data shape, which the file describes.
            e["properties"]["schema_version"] = json!({ "const": version });
            let mut d = data;
            if let Some(o) = d.as_object_mut() {
                o.remove("description");
            }
            e["properties"]["data"] = d;
            e["additionalProperties"] = json!(false);
            (name, aggregate, e)
        })
        .collect()
}

/// The name of every event type, built once.
pub fn event_types() -> &'static std::collections::BTreeSet<String> {
    static TYPES: std::sync::OnceLock<std::collections::BTreeSet<String>> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| event_schemas().into_iter().map(|(name, _, _)| name).collect())
}

/// The permission catalog as published in `schemas/permissions.json`: every
/// permission with what it allows, and the built-in roles' sets.
pub fn permission_catalog() -> Value {
    use crate::domain::access::{ADMIN, CATALOG, MEMBER, OWNER, builtin_permissions};
    // The catalog's own permissions only: those modules add depend on the
    // registry a node loads (`schemas/modules`).
    let role = |id: &str| {
        let ps: Vec<&str> = builtin_permissions(id)
            .unwrap_or_default()
            .iter()
            .map(|p| p.as_str())
            .filter(|p| CATALOG.iter().any(|(c, _)| c == p))
            .collect();
        json!({ "id": id, "permissions": ps })
    };
    json!({
        "permissions": CATALOG.iter().map(|(name, allows)| json!({ "name": name, "allows": allows })).collect::<Vec<_>>(),
        "builtInRoles": [role(OWNER), role(ADMIN), role(MEMBER)],
    })
}

/// The same catalog as a Markdown table, for `schemas/permissions.md`.
pub fn permission_table() -> String {
    use crate::domain::access::{ADMIN, CATALOG, MEMBER, builtin_permissions};
    let (admin, member) =
        (builtin_permissions(ADMIN).unwrap_or_default(), builtin_permissions(MEMBER).unwrap_or_default());
    let mut out = String::from(
        "# Permissions\n\nGenerated from `actors/src/domain/access.rs` (`CATALOG`); `schemas/permissions.json` holds the same.\nPermissions are `{action}_{resource}`. Built-in roles: `owner` holds every permission; `admin` and `member` hold the marked ones. Custom roles hold any set of them.\n\n| permission | allows | admin | member |\n|---|---|---|---|\n",
    );
    for (name, allows) in CATALOG {
        let mark = |set: &std::collections::BTreeSet<crate::domain::access::Permission>| {
            if set.iter().any(|p| p.as_str() == *name) { "yes" } else { "" }
        };
        out.push_str(&format!("| `{name}` | {allows} | {} | {} |\n", mark(&admin), mark(&member)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_variant_has_a_schema() {
        let names: Vec<String> = event_schemas().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(
            names,
            [
                "AccessEstablished",
                "AccessTokenCreated",
                "AccessTokenRevoked",
                "AccountErased",
                "AccountRegistered",
                "BackupLimitsSet",
                "BackupRemoved",
                "BackupTaken",
                "EmailChanged",
                "EmailReleased",
                "EmailReserved",
                "EmailVerificationRequested",
                "EmailVerified",
                "ForwardingSet",
                "InvitationAccepted",
                "InvitationRevoked",
                "MemberInvited",
                "MemberRemoved",
                "MemberRolesChanged",
                "MessagePublished",
                "MigrationApplied",
                "ModuleSubscribed",
                "ModuleUnsubscribed",
                "ModuleUpgradeStarted",
                "ModuleUpgraded",
                "PasswordChanged",
                "PasswordResetRequested",
                "ProfileUpdated",
                "RecordCreated",
                "RecordDeleted",
                "RecordTransformed",
                "RecordUpdated",
                "RoleCreated",
                "RoleDeleted",
                "RoleUpdated",
                "SeedsApplied",
                "SeedsRemoved",
                "SessionRefreshed",
                "SessionRevoked",
                "SessionStarted",
                "TenantCreated",
                "TenantDeleted",
                "TenantRenamed",
                "TenantResumed",
                "TenantSuspended",
                "ValueClaimed",
                "ValueReleased",
                "WebhookCreated",
                "WebhookDeleted",
                "WebhookDisabled",
                "WebhookEnabled",
                "WebhookRedeliveryRequested",
                "WebhookSecretRotated",
                "WebhookUpdated"
            ]
        );
    }

    #[test]
    fn sealed_fields_are_described_inline() {
        let (_, _, s) = event_schemas().into_iter().find(|(n, _, _)| n == "AccountRegistered").unwrap();
        let email = &s["properties"]["data"]["properties"]["email"];
        assert_eq!(email["required"], json!(["kid", "n", "c"]), "{email}");
    }
}

//! Modules in a tenant's database: `module_subscription` (one row per module
//! the tenant holds), `module_migration` (every migration applied, with its
//! checksum), the migrations themselves (each `MigrationApplied` runs its
//! file's SurrealQL, taken from this node's registry and checked against the
//! event's checksum), and the module tables `mod_{module}_{table}` that the
//! records of each module fill.
//!
//! A record's values are written with their SurrealDB types where order and
//! comparison need them (`decimal`, `datetime`), so filters and sorting work
//! on numbers and instants rather than on text.

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use actors::domain::manifest::{FieldType, Migration, Registry};
use actors::domain::tenant::Scope;
use actors::store::seal::person_key_name;

use super::event::{Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct TenantModules;
pub struct Records;

/// A module or table name from the log, safe to splice into a table name: the
/// manifest rules (lowercase letters, digits, `_`), checked again here.
fn name_token(e: &Event<'_>, field: &str) -> Result<String, Unapplied> {
    let v = e.text(field)?;
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(v) } else { Err(refused(format!("field `{field}` is not a module or table name"))) }
}

/// The read-model table of a module's table.
pub fn storage_table(module: &str, table: &str) -> String {
    format!("mod_{module}_{table}")
}

/// The migration an event names, from this node's registry, if its file has
/// the checksum the event recorded.
fn migration<'r>(
    registry: &'r Registry,
    module: &str,
    major: u32,
    name: &str,
    checksum: &str,
) -> Result<&'r Migration, Unapplied> {
    let version =
        registry.get(module, major).ok_or_else(|| refused(format!("this node's registry has no {module}@v{major}")))?;
    let found = match name.strip_prefix("upgrade/") {
        Some(file) => version.upgrade.as_ref().and_then(|u| u.migrations.iter().find(|m| m.name == file)),
        None => version.migrations.iter().find(|m| m.name == name),
    };
    let m = found.ok_or_else(|| refused(format!("{module}@v{major} has no migration {name}")))?;
    if m.checksum != checksum {
        return Err(refused(format!("migration {name} of {module}@v{major} changed since it was applied")));
    }
    Ok(m)
}

impl Projection for TenantModules {
    fn aggregate(&self) -> &'static str {
        "modules"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if *e.scope == Scope::Platform {
                return Err(refused("modules belong to tenants"));
            }
            Ok(match e.event_type() {
                "ModuleSubscribed" => {
                    let module = name_token(e, "module")?;
                    let id = e.record("module_subscription", &module)?;
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ module: $module, major: $major, full_version: $full, generation: $generation, subscribed_at: $at }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "module": module,
                            "major": e.int("major")?,
                            "full": e.text("full_version")?,
                            "generation": e.int("generation")?,
                            "at": e.stored.envelope.occurred_at,
                        }),
                    )]
                }
                "ModuleUnsubscribed" => {
                    let module = name_token(e, "module")?;
                    let id = e.record("module_subscription", &module)?;
                    let major = e.int("major")? as u32;
                    let mut out = vec![
                        statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({})),
                        statement(
                            "DELETE module_migration WHERE module = $module RETURN NONE".into(),
                            serde_json::json!({ "module": module }),
                        ),
                    ];
                    // The module's tables go with it; its records stay in the log.
                    if let Some(version) = e.modules.get(&module, major) {
                        for table in version.tables.keys() {
                            let t = storage_table(&module, table);
                            out.push(statement(format!("REMOVE TABLE IF EXISTS {t}"), serde_json::json!({})));
                        }
                    }
                    out
                }
                "ModuleUpgraded" => {
                    let module = name_token(e, "module")?;
                    let id = e.record("module_subscription", &module)?;
                    vec![
                        statement(
                            format!(
                                "UPDATE {id} SET major = $to, full_version = $full, upgrading_to = NONE RETURN NONE"
                            ),
                            serde_json::json!({ "to": e.int("to")?, "full": e.text("full_version")? }),
                        ),
                        statement(
                            "DELETE module_migration WHERE module = $module RETURN NONE".into(),
                            serde_json::json!({ "module": module }),
                        ),
                    ]
                }
                "ModuleUpgradeStarted" => {
                    let module = name_token(e, "module")?;
                    let id = e.record("module_subscription", &module)?;
                    vec![statement(
                        format!("UPDATE {id} SET upgrading_to = $to RETURN NONE"),
                        serde_json::json!({ "to": e.int("to")? }),
                    )]
                }
                "MigrationApplied" => {
                    let module = name_token(e, "module")?;
                    let major = e.int("major")? as u32;
                    let name = e.text("migration")?;
                    let checksum = e.text("checksum")?;
                    let kind = e.text("kind")?;
                    let mut out = Vec::new();
                    if kind != "baseline" {
                        let m = migration(e.modules, &module, major, &name, &checksum)?;
                        // The file is the operator's own SurrealQL, checked when the
                        // registry loaded; it runs verbatim (no variables).
                        out.push(Statement { sql: m.sql.clone(), vars: Map::new() });
                    }
                    out.push(statement(
                        "CREATE module_migration CONTENT { module: $module, major: $major, migration: $name, checksum: $checksum, kind: $kind, applied_at: $at } RETURN NONE".into(),
                        serde_json::json!({
                            "module": module, "major": major, "name": name, "checksum": checksum, "kind": kind,
                            "at": e.stored.envelope.occurred_at,
                        }),
                    ));
                    out
                }
                _ => Vec::new(),
            })
        })
    }
}

/// A record's content for its row: the values with their SurrealDB types,
/// and the record's bookkeeping.
fn content(e: &Event<'_>, module: &str, table: &str, values: &Map<String, Value>) -> (String, Map<String, Value>) {
    let versions = e.modules.versions(module);
    let field_kind = |name: &str| {
        versions.iter().rev().find_map(|v| v.table(table).and_then(|t| t.fields.get(name))).map(|f| &f.kind)
    };
    let mut parts = Vec::new();
    let mut vars = Map::new();
    for (i, (name, value)) in values.iter().enumerate() {
        // Field names follow the manifest's rules; anything else stays out.
        if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || name.is_empty() {
            continue;
        }
        let cast = match field_kind(name) {
            Some(FieldType::Decimal) => "<decimal> ",
            Some(FieldType::Datetime) => "<datetime> ",
            _ => "",
        };
        parts.push(format!("{name}: {cast}$v{i}"));
        vars.insert(format!("v{i}"), value.clone());
    }
    (parts.join(", "), vars)
}

impl Projection for Records {
    fn aggregate(&self) -> &'static str {
        "record"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if *e.scope == Scope::Platform {
                return Err(refused("records belong to tenants"));
            }
            let module = name_token(e, "module")?;
            let table = name_token(e, "table")?;
            let id = e.record(&storage_table(&module, &table), e.aggregate_id())?;
            if e.event_type() == "RecordDeleted" {
                return Ok(vec![statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({}))]);
            }
            let sealed = e
                .data
                .get("values")
                .and_then(Value::as_object)
                .ok_or_else(|| refused("field `values` is not an object"))?;
            // Personal values are sealed under the record's own key; an erased
            // record's are left out of its row.
            let kid = person_key_name(e.scope, e.aggregate_id());
            let mut values = Map::new();
            for (name, value) in sealed {
                if let Some(v) = e.open_json(name, value, &kid).await? {
                    values.insert(name.clone(), v);
                }
            }
            let (fields, mut vars) = content(e, &module, &table, &values);
            vars.insert("rid".into(), e.aggregate_id().into());
            vars.insert("at".into(), e.stored.envelope.occurred_at.clone().into());
            vars.insert("seq".into(), e.stored.seq.into());
            let sep = if fields.is_empty() { "" } else { ", " };
            let sql = match e.event_type() {
                "RecordCreated" => {
                    vars.insert("origin".into(), e.data.get("origin").cloned().unwrap_or(Value::Null));
                    vars.insert("major".into(), e.int("major")?.into());
                    format!(
                        "UPSERT {id} CONTENT {{ {fields}{sep}record_id: $rid, created_at: $at, updated_at: $at, seq: $seq, origin: $origin, major: $major }} RETURN NONE"
                    )
                }
                // The whole row is written again, so a field the change (or the
                // upgrade) removed is gone; what the event does not carry comes
                // from the row.
                "RecordUpdated" | "RecordTransformed" => {
                    let major = match e.event_type() {
                        "RecordTransformed" => {
                            vars.insert("major".into(), e.int("major")?.into());
                            "$major"
                        }
                        _ => "$old.major",
                    };
                    format!(
                        "LET $old = (SELECT created_at, origin, major FROM ONLY {id}); UPSERT {id} CONTENT {{ {fields}{sep}record_id: $rid, created_at: $old.created_at, updated_at: $at, seq: $seq, origin: $old.origin, major: {major} }} RETURN NONE"
                    )
                }
                _ => return Ok(Vec::new()),
            };
            Ok(vec![statement(sql, Value::Object(vars))])
        })
    }
}

//! The public contract of the event log: one JSON Schema per event type, generated
//! from the Rust types so it cannot drift (a test compares it with `schemas/events/`).

use serde_json::{Value, json};

use crate::account::{AccountEvent, EMAIL_RESERVED, EmailReserved};
use crate::event_store::{Envelope, SCHEMA_VERSION};
use crate::tenant::TenantEvent;

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
    let mut all: Vec<(String, &'static str, Value)> = Vec::new();
    for (name, data) in variants(to_value(schemars::schema_for!(AccountEvent))) {
        all.push((name, "account", data));
    }
    for (name, data) in variants(to_value(schemars::schema_for!(TenantEvent))) {
        all.push((name, "tenant", data));
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
    all.push((EMAIL_RESERVED.to_owned(), "email", claim));
    all.sort_by(|a, b| a.0.cmp(&b.0));

    let envelope = to_value(schemars::schema_for!(Envelope));
    all.into_iter()
        .map(|(name, aggregate, data)| {
            let mut e = envelope.clone();
            e["$id"] = json!(format!("https://canopy.dev/schemas/events/{name}.json"));
            e["title"] = json!(name);
            e["description"] = data.get("description").cloned().unwrap_or(json!(name));
            e["properties"]["type"] = json!({ "const": name });
            e["properties"]["aggregate"] = json!({ "const": aggregate });
            e["properties"]["schema_version"] = json!({ "const": SCHEMA_VERSION });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_variant_has_a_schema() {
        let names: Vec<String> = event_schemas().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["AccountRegistered", "EmailReserved", "ProfileUpdated", "TenantCreated"]);
    }

    #[test]
    fn sealed_fields_are_described_inline() {
        let (_, _, s) = event_schemas().into_iter().find(|(n, _, _)| n == "AccountRegistered").unwrap();
        let email = &s["properties"]["data"]["properties"]["email"];
        assert_eq!(email["required"], json!(["kid", "n", "c"]), "{email}");
    }
}

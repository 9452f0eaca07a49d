//! The committed contracts in `schemas/` match the code. Run with `CANOPY_BLESS=1`
//! to rewrite them after an intended change.

use std::collections::BTreeSet;

use actors::contract::event_schemas;
use serde_json::{Value, json};

use crate::harness::*;

fn bless() -> bool {
    std::env::var("CANOPY_BLESS").is_ok_and(|v| v == "1")
}

fn compare(rel: &str, expected: &str) {
    let path = repo_file(rel);
    if bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, expected).unwrap();
        return;
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        found == expected,
        "{rel} is out of date: run `CANOPY_BLESS=1 cargo test -p canopy-node --test it contracts`"
    );
}

#[test]
fn the_committed_graphql_schema_matches_the_code() {
    compare("schemas/schema.graphql", &canopy_node::graphql::schema().sdl());
}

#[test]
fn the_committed_permission_catalog_matches_the_code() {
    let json = serde_json::to_string_pretty(&actors::contract::permission_catalog()).unwrap() + "\n";
    compare("schemas/permissions.json", &json);
    let table = actors::contract::permission_table() + &canopy_node::graphql::permissions::field_table();
    compare("schemas/permissions.md", &table);
}

/// Every root field of the schema declares what it needs, and the table names
/// no field the schema does not have.
#[tokio::test]
async fn every_graphql_field_declares_its_permission() {
    let schema = canopy_node::graphql::schema();
    let r = schema
        .execute(
            "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }",
        )
        .await;
    let data = r.data.into_json().unwrap();
    let mut fields = BTreeSet::new();
    for (root, key) in [("Query", "queryType"), ("Mutation", "mutationType"), ("Subscription", "subscriptionType")] {
        for f in data["__schema"][key]["fields"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap().to_owned();
            assert!(
                canopy_node::graphql::permissions::needs(root, &name).is_some(),
                "{root}.{name} declares no permission in graphql/permissions.rs"
            );
            fields.insert(format!("{root}.{name}"));
        }
    }
    for (root, name, _) in canopy_node::graphql::permissions::ROOT_FIELDS {
        assert!(fields.contains(&format!("{root}.{name}")), "{root}.{name} is declared but not in the schema");
    }
    for (_, _, needs) in canopy_node::graphql::permissions::ROOT_FIELDS {
        if let canopy_node::graphql::permissions::Needs::Permission(p) = needs {
            assert!(actors::domain::access::Permission::parse(p).is_ok(), "{p} is not in the catalog");
        }
    }
}

#[test]
fn every_event_type_has_its_committed_json_schema() {
    let schemas = event_schemas();
    for (name, _, schema) in &schemas {
        compare(&format!("schemas/events/{name}.json"), &(serde_json::to_string_pretty(schema).unwrap() + "\n"));
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo_file("schemas/events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = schemas.iter().map(|(n, _, _)| format!("{n}.json")).collect();
    assert_eq!(on_disk, expected, "schemas/events holds a schema for no event type, or misses one");
}

#[test]
fn the_subject_map_documents_every_event_subject_and_header() {
    let doc = std::fs::read_to_string(repo_file("schemas/subjects.md")).unwrap();
    for (name, aggregate, _) in event_schemas() {
        assert!(doc.contains(&name), "subjects.md does not mention {name}");
        let prefix = match aggregate {
            "tenant" => "evt._system.tenant.".to_owned(),
            other => format!("evt.{{tenant}}.{other}."),
        };
        assert!(doc.contains(&prefix), "subjects.md does not show the {aggregate} subjects ({prefix})");
    }
    for header in [
        "Nats-Msg-Id",
        "Nats-Expected-Last-Subject-Sequence",
        "Nats-Expected-Last-Subject-Sequence-Subject",
        "Nats-Batch-Id",
        "Nats-Batch-Sequence",
        "Nats-Batch-Commit",
        "cmd.{tenant}.account",
        "cmd._system.tenant",
        "KV `snapshots`",
        "KV `keys`",
    ] {
        assert!(doc.contains(header), "subjects.md does not document {header}");
    }
}

/// A small structural check of a value against the generated schema: required
/// keys, no unknown keys where the schema forbids them, and `const` values.
fn conforms(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    if let Some(c) = schema.get("const") {
        return if value == c { Ok(()) } else { Err(format!("{path}: expected {c}, found {value}")) };
    }
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Ok(()) };
    let obj = value.as_object().ok_or_else(|| format!("{path}: not an object"))?;
    for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        let k = req.as_str().unwrap();
        if !obj.contains_key(k) {
            return Err(format!("{path}: missing {k}"));
        }
    }
    for (k, v) in obj {
        match props.get(k) {
            Some(s) => conforms(v, s, &format!("{path}.{k}"))?,
            None => return Err(format!("{path}: unexpected key {k}")),
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_event_in_the_log_conforms_to_its_schema() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.webhook_allow_loopback = true).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    node.register("acme", "ada@example.com", "a-good-password").await;
    node.gql(
        Some("acme"),
        Some(&owner),
        "mutation { updateProfile(input: {firstname: \"O\", lastname: \"W\"}) { id } }",
        json!({}),
    )
    .await;
    let r = node.register("acme", "grace@example.com", "a-good-password").await;
    let refreshed = node.refresh("acme", &r["data"]["register"]["refreshToken"]).await;
    let token = token_of(&refreshed, "refreshSession");
    let code = node.verification_code("grace@example.com").await;
    let verified = node
        .gql(
            Some("acme"),
            Some(&token),
            "mutation($c: String!) { verifyEmail(input: {code: $c}) { emailVerified } }",
            json!({ "c": code }),
        )
        .await;
    assert_eq!(verified["data"]["verifyEmail"]["emailVerified"], true, "{verified}");
    let out = node.gql(Some("acme"), Some(&token), "mutation { logout }", json!({})).await;
    assert_eq!(out["data"]["logout"], true, "{out}");
    // Roles: create, assign, take back, change, delete.
    let me = node.gql(Some("acme"), Some(&owner), "{ me { id } }", json!({})).await;
    let _ = me;
    let role = node
        .gql(
            Some("acme"),
            Some(&owner),
            "mutation { createRole(input: {name: \"Support\", permissions: [\"read_users\"]}) { id } }",
            json!({}),
        )
        .await;
    let role_id = role["data"]["createRole"]["id"].as_str().unwrap_or_else(|| panic!("{role}")).to_owned();
    let grace_id = r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    let assign = "mutation($u: ID!, $r: [ID!]!) { changeMemberRole(input: {userId: $u, roles: $r}) }";
    node.gql(Some("acme"), Some(&owner), assign, json!({ "u": grace_id, "r": [role_id] })).await;
    node.gql(Some("acme"), Some(&owner), assign, json!({ "u": grace_id, "r": ["member"] })).await;
    node.gql(
        Some("acme"),
        Some(&owner),
        "mutation($id: ID!) { updateRole(input: {id: $id, name: \"Help\", permissions: []}) { id } }",
        json!({ "id": role_id }),
    )
    .await;
    let deleted = node
        .gql(Some("acme"), Some(&owner), "mutation($id: ID!) { deleteRole(id: $id) }", json!({ "id": role_id }))
        .await;
    assert_eq!(deleted["data"]["deleteRole"], true, "{deleted}");
    // An access token, created and revoked.
    let created = node
        .gql(
            Some("acme"),
            Some(&owner),
            "mutation { createAccessToken(input: {name: \"ci\", scopes: [\"read_users\"]}) { accessToken { id } } }",
            json!({}),
        )
        .await;
    let token_id =
        created["data"]["createAccessToken"]["accessToken"]["id"].as_str().unwrap_or_else(|| panic!("{created}"));
    let revoked = node
        .gql(Some("acme"), Some(&owner), "mutation($id: ID!) { revokeAccessToken(id: $id) }", json!({ "id": token_id }))
        .await;
    assert_eq!(revoked["data"]["revokeAccessToken"], true, "{revoked}");
    // Invitations: one accepted, one revoked.
    let invite = "mutation($e: String!) { inviteMember(input: {email: $e, role: \"member\"}) { id } }";
    node.gql(Some("acme"), Some(&owner), invite, json!({ "e": "ivy@example.com" })).await;
    let link = node.outbox_mails("ivy@example.com", 1).await.pop().unwrap().link_token().unwrap();
    let accepted = node
        .gql(
            Some("acme"),
            None,
            "mutation($t: String!) { acceptInvitation(input: {token: $t, password: \"ivys-password\", firstname: \"I\", lastname: \"V\"}) { token } }",
            json!({ "t": link }),
        )
        .await;
    assert!(accepted["data"]["acceptInvitation"]["token"].is_string(), "{accepted}");
    let second = node.gql(Some("acme"), Some(&owner), invite, json!({ "e": "jo@example.com" })).await;
    let second = second["data"]["inviteMember"]["id"].as_str().unwrap_or_else(|| panic!("{second}"));
    let revoked = node
        .gql(Some("acme"), Some(&owner), "mutation($id: ID!) { revokeInvitation(id: $id) }", json!({ "id": second }))
        .await;
    assert_eq!(revoked["data"]["revokeInvitation"], true, "{revoked}");
    // A reset through the mailed link, an email change, an erasure.
    let reset = "mutation($e: String!) { requestPasswordReset(input: {email: $e}) }";
    node.gql(Some("acme"), None, reset, json!({ "e": "grace@example.com" })).await;
    let link = node.outbox_mails("grace@example.com", 2).await.last().unwrap().link_token().unwrap();
    let done = node
        .gql(
            Some("acme"),
            None,
            "mutation($t: String!) { resetPassword(input: {token: $t, password: \"a-newer-password\"}) }",
            json!({ "t": link }),
        )
        .await;
    assert_eq!(done["data"]["resetPassword"], true, "{done}");
    let login = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "grace@example.com", "password": "a-newer-password" } }),
        )
        .await;
    let token = token_of(&login, "login");
    let change = node
        .gql(
            Some("acme"),
            Some(&token),
            "mutation { changeEmail(input: {newEmail: \"grace2@example.com\", password: \"a-newer-password\"}) }",
            json!({}),
        )
        .await;
    assert_eq!(change["data"]["changeEmail"], true, "{change}");
    let code = node.verification_code("grace2@example.com").await;
    let verified = node
        .gql(
            Some("acme"),
            Some(&token),
            "mutation($c: String!) { verifyEmail(input: {code: $c}) { email } }",
            json!({ "c": code }),
        )
        .await;
    assert_eq!(verified["data"]["verifyEmail"]["email"], "grace2@example.com", "{verified}");
    let erased = node
        .gql(
            Some("acme"),
            Some(&token),
            "mutation { deleteAccount(input: {password: \"a-newer-password\"}) }",
            json!({}),
        )
        .await;
    assert_eq!(erased["data"]["deleteAccount"], true, "{erased}");
    // Modules: a subscription with its migrations and seeds, records made,
    // changed and deseeded, an upgrade that transforms them, an unsubscription.
    let module = |q: &'static str, v: Value| {
        let (node, owner) = (&node, &owner);
        async move {
            let r = node.gql(Some("acme"), Some(owner), q, v).await;
            assert!(r["errors"].is_null(), "{r}");
        }
    };
    module("mutation { subscribeModule(input: {name: \"contacts\", version: \"v1\"}) { applied } }", json!({})).await;
    module("mutation { seedModules { applied } }", json!({})).await;
    let (_, listed) = crate::modules::rest(
        &node,
        "GET",
        "/t/acme/contacts/v1/contact?email=ada@northwind.example",
        Some(&owner),
        None,
    )
    .await;
    let ada = listed["data"][0]["id"].as_str().unwrap_or_else(|| panic!("{listed}")).to_owned();
    let path = format!("/t/acme/contacts/v1/contact/{ada}");
    let (status, r) =
        crate::modules::rest(&node, "PATCH", &path, Some(&owner), Some(json!({ "email": "ada@canopy.test" }))).await;
    assert_eq!(status, 200, "{r}");
    module("mutation { deseedModules { applied } }", json!({})).await;
    // Enough records (each with its email's claim) that the upgrade takes
    // more than one batch, which it begins with `ModuleUpgradeStarted`.
    crate::modules::many_contacts(&node, &owner, 460).await;
    module("mutation { upgradeModule(input: {name: \"contacts\", to: \"v2\"}) { applied } }", json!({})).await;
    module("mutation { unsubscribeModule(name: \"contacts\") { applied } }", json!({})).await;
    // Backups: limits set, two taken (the second removes the first), one restored.
    let admin = node.admin_token().await;
    let limits =
        "mutation { setBackupLimits(input: {slug: \"acme\", perDayBackups: 5, maxBackups: 1}) { maxBackups } }";
    let r = node.gql(None, Some(&admin), limits, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    let mut last = String::new();
    for _ in 0..2 {
        let r = node.gql(Some("acme"), Some(&owner), "mutation { backupTenant { id } }", json!({})).await;
        last = r["data"]["backupTenant"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    }
    let restore = "mutation($b: ID!) { restoreTenant(input: {backupId: $b, slug: \"acme-clone\"}) { slug } }";
    let r = node.gql(None, Some(&admin), restore, json!({ "b": last })).await;
    assert_eq!(r["data"]["restoreTenant"]["slug"], "acme-clone", "{r}");
    // Webhooks: one receiving pushes, so the message below is delivered.
    let endpoint = crate::webhooks::Endpoint::start().await;
    let create = "mutation($u: String!) { createWebhook(input: {name: \"hook\", url: $u, eventTypes: [\"MessagePublished\"]}) { webhook { id } } }";
    let r = node.gql(Some("acme"), Some(&owner), create, json!({ "u": endpoint.url("/in") })).await;
    let hook = r["data"]["createWebhook"]["webhook"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    // Push: a forwarding choice and a message.
    let forward = "mutation { setPushForwarding(types: [\"ProfileUpdated\"]) }";
    let r = node.gql(Some("acme"), Some(&owner), forward, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    let publish = "mutation { publishMessage(input: {topic: \"orders/42\", payload: \"shipped\"}) { id } }";
    let r = node.gql(Some("acme"), Some(&owner), publish, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    let got = endpoint.wait_for(1, std::time::Duration::from_secs(20)).await;
    let delivery = got[0].header("webhook-id").unwrap().to_owned();
    crate::webhooks::delivery_with(&node, &owner, &hook, "SUCCEEDED").await;
    for (q, v) in [
        ("mutation($d: ID!) { redeliver(deliveryId: $d) { deliveryId } }", json!({ "d": delivery })),
        ("mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }", json!({ "id": hook })),
        (
            "mutation($id: ID!) { updateWebhook(input: {id: $id, name: \"renamed\", enabled: false}) { id } }",
            json!({ "id": hook }),
        ),
        ("mutation($id: ID!) { updateWebhook(input: {id: $id, enabled: true}) { id } }", json!({ "id": hook })),
        ("mutation($id: ID!) { deleteWebhook(id: $id) }", json!({ "id": hook })),
    ] {
        let r = node.gql(Some("acme"), Some(&owner), q, v).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    // The tenant's lifecycle, ending with its deletion.
    let rename = "mutation { updateTenant(input: {name: \"Acme Corp\"}) { name } }";
    let renamed = node.gql(Some("acme"), Some(&owner), rename, json!({})).await;
    assert_eq!(renamed["data"]["updateTenant"]["name"], "Acme Corp", "{renamed}");
    for change in ["suspendTenant(slug: \"acme\") { status }", "resumeTenant(slug: \"acme\") { status }"] {
        let r = node.gql(None, Some(&admin), &format!("mutation {{ {change} }}"), json!({})).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    let deleted = node.gql(None, Some(&admin), "mutation { deleteTenant(input: {slug: \"acme\"}) }", json!({})).await;
    assert_eq!(deleted["data"]["deleteTenant"], true, "{deleted}");

    let schemas: std::collections::HashMap<String, Value> =
        event_schemas().into_iter().map(|(n, _, s)| (n, s)).collect();
    let events = all_events(&nats).await;
    let mut seen = BTreeSet::new();
    for (subject, payload) in events {
        let v: Value = serde_json::from_slice(&payload).unwrap();
        let t = v["type"].as_str().unwrap().to_owned();
        let schema = schemas.get(&t).unwrap_or_else(|| panic!("event type {t} has no schema"));
        conforms(&v, schema, &t).unwrap();
        assert!(subject.ends_with(&format!(".{t}")), "{subject} does not end with its type");
        assert_eq!(subject.split('.').nth(1), v["tenant"].as_str());
        seen.insert(t);
    }
    assert_eq!(seen.len(), schemas.len(), "the scenario should produce every event type: {seen:?}");
}

//! The tenant lifecycle: renaming by a member holding `update_tenant`,
//! suspension and resumption by a platform administrator (a suspended tenant's
//! members and tokens are refused and nothing is lost), and deletion, which
//! shreds the tenant's keys, drops its read models and keeps its slug taken.

use actors::store::seal::SealError;
use serde_json::{Value, json};

use crate::harness::*;
use crate::lifecycle::{key_ring, sealed_fields};

const TENANT: &str = "{ tenant { slug name status } }";
const TENANTS: &str = "{ tenants { slug name status } }";
const USERS: &str = "{ users { totalCount } }";
const UPDATE: &str = "mutation($n: String!) { updateTenant(input: {name: $n}) { slug name status } }";
const SUSPEND: &str = "mutation($s: String!) { suspendTenant(slug: $s) { slug status } }";
const RESUME: &str = "mutation($s: String!) { resumeTenant(slug: $s) { slug status } }";
const DELETE: &str = "mutation($s: String!, $p: String) { deleteTenant(input: {slug: $s, password: $p}) }";
const CREATE_TOKEN: &str =
    "mutation($s: [String!]!) { createAccessToken(input: {name: \"ops\", scopes: $s}) { secret } }";

async fn token(node: &TestNode, owner: &str, scopes: Value) -> String {
    let r = node.gql(Some("acme"), Some(owner), CREATE_TOKEN, json!({ "s": scopes })).await;
    r["data"]["createAccessToken"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned()
}

async fn owner_login(node: &TestNode) -> Value {
    node.gql(
        Some("acme"),
        None,
        LOGIN,
        json!({ "input": { "email": "owner@acme.test", "password": "owner-password" } }),
    )
    .await
}

#[tokio::test]
async fn a_suspended_tenant_refuses_its_members_and_tokens_and_loses_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let globex = node.tenant("globex", "owner@globex.test").await;
    let admin = node.admin_token().await;
    let bob = token_of(&node.register("acme", "bob@example.com", "bob-the-builder").await, "register");
    let ops = token(&node, &owner, json!(["read_users", "update_tenant"])).await;

    // Renaming needs `update_tenant`: the owner and a token holding it may, a member may not.
    let r = node.gql(Some("acme"), Some(&owner), UPDATE, json!({ "n": "  Acme Corp " })).await;
    assert_eq!(r["data"]["updateTenant"], json!({ "slug": "acme", "name": "Acme Corp", "status": "ACTIVE" }), "{r}");
    let r = node.gql(Some("acme"), Some(&ops), UPDATE, json!({ "n": "Acme Inc" })).await;
    assert_eq!(r["data"]["updateTenant"]["name"], "Acme Inc", "{r}");
    let before = last_seq(&nats).await;
    assert_eq!(code(&node.gql(Some("acme"), Some(&bob), UPDATE, json!({ "n": "Bob's" })).await), "FORBIDDEN");
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), UPDATE, json!({ "n": "" })).await), "BAD_USER_INPUT");
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), UPDATE, json!({ "n": "a\u{7}b" })).await), "BAD_USER_INPUT");
    // Only a platform administrator suspends; a tenant's owner cannot, here or in another tenant.
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), SUSPEND, json!({ "s": "acme" })).await), "FORBIDDEN");
    assert_eq!(code(&node.gql(Some("globex"), Some(&globex), SUSPEND, json!({ "s": "acme" })).await), "FORBIDDEN");
    assert_eq!(last_seq(&nats).await, before, "a refused change appends nothing");
    let tenant = node.gql(Some("acme"), Some(&bob), TENANT, json!({})).await;
    assert_eq!(tenant["data"]["tenant"]["name"], "Acme Inc", "{tenant}");

    let r = node.gql(None, Some(&admin), SUSPEND, json!({ "s": "acme" })).await;
    assert_eq!(r["data"]["suspendTenant"], json!({ "slug": "acme", "status": "SUSPENDED" }), "{r}");
    // From the next request on, everyone acting in it is refused: members, the
    // token, and whoever signs in.
    for (who, t) in [("owner", Some(owner.as_str())), ("member", Some(bob.as_str())), ("token", Some(ops.as_str()))] {
        let r = node.gql(Some("acme"), t, USERS, json!({})).await;
        assert_eq!(code(&r), "FORBIDDEN", "{who}: {r}");
        assert_eq!(r["errors"][0]["message"], "this tenant is suspended", "{who}: {r}");
    }
    assert_eq!(code(&owner_login(&node).await), "FORBIDDEN");
    let r = node.register("acme", "eve@example.com", "eve-password").await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    // Another tenant does not notice.
    let r = node.gql(Some("globex"), Some(&globex), USERS, json!({})).await;
    assert_eq!(r["data"]["users"]["totalCount"], 1, "{r}");
    // Suspending twice is a conflict; the administrator sees the status.
    assert_eq!(code(&node.gql(None, Some(&admin), SUSPEND, json!({ "s": "acme" })).await), "CONFLICT");
    let all = node.gql(None, Some(&admin), TENANTS, json!({})).await;
    assert!(
        all["data"]["tenants"]
            .as_array()
            .unwrap()
            .contains(&json!({ "slug": "acme", "name": "Acme Inc", "status": "SUSPENDED" })),
        "{all}"
    );
    // Also for a node started afterwards: the status comes from the log.
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let other = TestNode::start_configured(&nats, |c| c.master_key = Some(master.trim().to_owned().into())).await;
    assert_eq!(code(&other.gql(Some("acme"), Some(&owner), USERS, json!({})).await), "FORBIDDEN");

    let r = node.gql(None, Some(&admin), RESUME, json!({ "s": "acme" })).await;
    assert_eq!(r["data"]["resumeTenant"]["status"], "ACTIVE", "{r}");
    assert_eq!(code(&node.gql(None, Some(&admin), RESUME, json!({ "s": "acme" })).await), "CONFLICT");
    assert_eq!(code(&node.gql(None, Some(&admin), SUSPEND, json!({ "s": "nobody" })).await), "NOT_FOUND");
    assert_eq!(code(&node.gql(None, Some(&admin), SUSPEND, json!({ "s": "Not A Slug" })).await), "BAD_USER_INPUT");
    // Nothing was lost: the same sessions and token work again, with the same data.
    for t in [&owner, &ops] {
        let r = node.gql(Some("acme"), Some(t), USERS, json!({})).await;
        assert_eq!(r["data"]["users"]["totalCount"], 2, "{r}");
    }
    assert!(owner_login(&node).await["data"]["login"]["token"].is_string());
    let r = other.gql(Some("acme"), Some(&bob), TENANT, json!({})).await;
    assert_eq!(r["data"]["tenant"]["status"], "ACTIVE", "{r}");
}

#[tokio::test]
async fn deleting_a_tenant_shreds_its_data_and_keeps_its_slug() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, globex, bob_id, bob } = node.acme_globex_bob().await;
    let ops = token(&node, &owner, json!(["read_users", "delete_tenant"])).await;

    // Refused, and nothing appended: without or with a wrong password, by a
    // member without `delete_tenant`, by a token (it has no password), for
    // another tenant's slug, by another tenant's owner.
    let before = last_seq(&nats).await;
    let refusals = [
        (Some(owner.as_str()), json!({ "s": "acme" }), "BAD_USER_INPUT"),
        (Some(owner.as_str()), json!({ "s": "acme", "p": "not-the-password" }), "BAD_USER_INPUT"),
        (Some(bob.as_str()), json!({ "s": "acme", "p": "bob-the-builder" }), "FORBIDDEN"),
        (Some(ops.as_str()), json!({ "s": "acme", "p": "owner-password" }), "FORBIDDEN"),
        (Some(owner.as_str()), json!({ "s": "globex", "p": "owner-password" }), "BAD_USER_INPUT"),
        (None, json!({ "s": "acme", "p": "owner-password" }), "UNAUTHENTICATED"),
    ];
    for (t, vars, expected) in refusals {
        let r = node.gql(Some("acme"), t, DELETE, vars.clone()).await;
        assert_eq!(code(&r), expected, "{vars}: {r}");
    }
    let r = node.gql(Some("globex"), Some(&globex), DELETE, json!({ "s": "acme", "p": "owner-password" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert_eq!(last_seq(&nats).await, before, "a refused deletion appends nothing");

    let ring = key_ring(&nats, &node).await;
    for sealed in sealed_fields(&nats, &bob_id).await {
        assert!(ring.open(&sealed).await.is_ok(), "before the deletion the fields open");
    }
    let r = node.gql(Some("acme"), Some(&owner), DELETE, json!({ "s": "acme", "p": "owner-password" })).await;
    assert_eq!(r["data"]["deleteTenant"], true, "{r}");

    // The tenant is gone for everyone, from the next request on.
    for t in [Some(owner.as_str()), Some(bob.as_str()), Some(ops.as_str())] {
        assert_eq!(code(&node.gql(Some("acme"), t, USERS, json!({})).await), "NOT_FOUND");
    }
    assert_eq!(code(&owner_login(&node).await), "NOT_FOUND");
    // Its persons' fields and its own secrets no longer open, on any node: the
    // keys are destroyed, and the tenant's key can never be made again.
    let ring = key_ring(&nats, &node).await;
    for sealed in sealed_fields(&nats, &bob_id).await {
        assert!(matches!(ring.open(&sealed).await, Err(SealError::MissingKey(_))), "a field still opens");
    }
    let tenant_key = actors::store::seal::tenant_key_name(&actors::domain::tenant::Scope::Tenant(
        actors::domain::tenant::TenantId::parse("acme").unwrap(),
    ));
    assert!(matches!(ring.key(&tenant_key).await, Err(SealError::Shredded(_))), "the tenant key came back");
    // The slug stays taken; the directory shows it deleted, its name erased.
    let admin = node.admin_token().await;
    let again = node
        .gql(
            None,
            Some(&admin),
            CREATE_TENANT,
            json!({ "input": { "slug": "acme", "name": "Acme again", "ownerEmail": "new@acme.test", "ownerPassword": "owner-password" } }),
        )
        .await;
    assert_eq!(code(&again), "BAD_USER_INPUT", "{again}");
    let all = node.gql(None, Some(&admin), TENANTS, json!({})).await;
    assert!(
        all["data"]["tenants"]
            .as_array()
            .unwrap()
            .contains(&json!({ "slug": "acme", "name": "[erased]", "status": "DELETED" })),
        "{all}"
    );
    assert_eq!(code(&node.gql(None, Some(&admin), DELETE, json!({ "s": "acme" })).await), "NOT_FOUND");
    // The other tenant is untouched.
    let r = node.gql(Some("globex"), Some(&globex), USERS, json!({})).await;
    assert_eq!(r["data"]["users"]["totalCount"], 1, "{r}");

    // Its read models are dropped, and a rebuild from the log does not bring them back.
    let config = canopy_node::Config { surreal_url: Some("mem://".into()), ..canopy_node::Config::default() };
    let rm = canopy_node::read_model::ReadModel::connect(&config).await.unwrap();
    let store = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap().0;
    canopy_node::projection::rebuild(&rm, &store, &ring, Default::default()).await.unwrap();
    let dbs = rm.databases().await.unwrap();
    assert!(dbs.contains(&"t_globex".to_owned()) && !dbs.contains(&"t_acme".to_owned()), "{dbs:?}");
    let dump = rm.dump().await.unwrap().to_string();
    assert!(!dump.contains("bob@example.com") && !dump.contains("Acme"), "{dump}");
}

#[tokio::test]
async fn a_platform_administrator_deletes_without_a_password() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let admin = node.admin_token().await;
    node.gql(None, Some(&admin), SUSPEND, json!({ "s": "acme" })).await;
    // A suspended tenant can be deleted.
    let r = node.gql(None, Some(&admin), DELETE, json!({ "s": "acme" })).await;
    assert_eq!(r["data"]["deleteTenant"], true, "{r}");
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), TENANT, json!({})).await), "NOT_FOUND");
    // A node started afterwards knows it from the log.
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let other = TestNode::start_configured(&nats, |c| c.master_key = Some(master.trim().to_owned().into())).await;
    assert_eq!(code(&owner_login(&other).await), "NOT_FOUND");
}

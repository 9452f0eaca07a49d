//! Backups: taken into the object store `backups` within the tenant's daily
//! and total limits, and restored as a new tenant (a clone) with the same
//! accounts, roles, modules and records, the original untouched.

use serde_json::{Value, json};

use crate::harness::*;
use crate::modules::{rest, subscribe};

const BACKUP: &str = "mutation { backupTenant { id createdAt size events } }";
const BACKUPS: &str = "{ backups { id size } backupLimits { perDayBackups maxBackups } }";
const LIMITS: &str = "mutation($s: String!, $d: Int!, $m: Int!) { setBackupLimits(input: {slug: $s, perDayBackups: $d, maxBackups: $m}) { perDayBackups maxBackups } }";
const RESTORE: &str =
    "mutation($b: ID!, $s: String!) { restoreTenant(input: {backupId: $b, slug: $s}) { slug name status } }";
const USERS: &str = "{ users(first: 50) { totalCount nodes { email firstname } } }";

fn ids(r: &Value) -> Vec<String> {
    r["data"]["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn backups_keep_to_their_limits_and_a_restore_clones_the_tenant() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, bob, .. } = node.acme_globex_bob().await;
    let admin = node.admin_token().await;
    let carol = node.register("acme", "carol@example.com", "carols-password").await;
    assert!(carol["errors"].is_null(), "{carol}");
    assert!(subscribe(&node, &owner, "contacts", "v1", false).await["errors"].is_null());
    let (status, r) = rest(
        &node,
        "POST",
        "/t/acme/contacts/v1/contact",
        Some(&owner),
        Some(json!({ "name": "Ada", "email": "ada@canopy.test" })),
    )
    .await;
    assert_eq!(status, 201, "{r}");

    // Only `manage_backups` takes one.
    assert_eq!(code(&node.gql(Some("acme"), Some(&bob), BACKUP, json!({})).await), "FORBIDDEN");
    let first = node.gql(Some("acme"), Some(&owner), BACKUP, json!({})).await;
    let first_id = first["data"]["backupTenant"]["id"].as_str().unwrap_or_else(|| panic!("{first}")).to_owned();
    assert!(first["data"]["backupTenant"]["size"].as_u64().unwrap() > 1000, "{first}");
    assert!(first["data"]["backupTenant"]["events"].as_u64().unwrap() > 10, "{first}");
    // One a day by default: the next is refused and nothing is appended.
    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&owner), BACKUP, json!({})).await;
    assert_eq!(code(&r), "LIMIT_EXCEEDED", "{r}");
    assert_eq!(last_seq(&nats).await, before);
    let listed = node.gql(Some("acme"), Some(&owner), BACKUPS, json!({})).await;
    assert_eq!(ids(&listed), std::slice::from_ref(&first_id));
    assert_eq!(listed["data"]["backupLimits"], json!({ "perDayBackups": 1, "maxBackups": 10 }));

    // The backup holds the log as it is: sealed fields sealed.
    let bucket = async_nats::jetstream::new(nats.client().await).get_object_store("backups").await.unwrap();
    let mut object = bucket.get(&first_id).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes).await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"kind\":\"event\"") && text.contains("AccountRegistered"));
    assert!(
        !text.contains("carol@example.com") && !text.contains("carols-password"),
        "a clear email or password in a backup"
    );

    // The administrator raises the daily limit and lowers the total: the
    // oldest goes when one more is taken.
    let limits = |d: i64, m: i64| json!({ "s": "acme", "d": d, "m": m });
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), LIMITS, limits(5, 2)).await), "FORBIDDEN");
    assert_eq!(code(&node.gql(None, Some(&admin), LIMITS, limits(0, 2)).await), "BAD_USER_INPUT");
    let r = node.gql(None, Some(&admin), LIMITS, limits(5, 2)).await;
    assert_eq!(r["data"]["setBackupLimits"], json!({ "perDayBackups": 5, "maxBackups": 2 }), "{r}");
    let second = node.gql(Some("acme"), Some(&owner), BACKUP, json!({})).await;
    let second_id = second["data"]["backupTenant"]["id"].as_str().unwrap_or_else(|| panic!("{second}")).to_owned();
    // Carol is erased after the second backup: a clone of it keeps her erased.
    let carol_token = token_of(&carol, "register");
    let r = node
        .gql(
            Some("acme"),
            Some(&carol_token),
            "mutation { deleteAccount(input: {password: \"carols-password\"}) }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["deleteAccount"], true, "{r}");
    let third = node.gql(Some("acme"), Some(&owner), BACKUP, json!({})).await;
    assert!(third["errors"].is_null(), "{third}");
    let listed = ids(&node.gql(Some("acme"), Some(&owner), BACKUPS, json!({})).await);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&first_id), "the oldest backup was removed");
    assert!(bucket.get(&first_id).await.is_err(), "its object is gone");

    // Restores: platform administrators only, into a free slug, from a backup that exists.
    let restore = |b: &str, s: &str| json!({ "b": b, "s": s });
    assert_eq!(code(&node.gql(Some("acme"), Some(&owner), RESTORE, restore(&second_id, "copy")).await), "FORBIDDEN");
    assert_eq!(code(&node.gql(None, Some(&admin), RESTORE, restore(&second_id, "globex")).await), "BAD_USER_INPUT");
    assert_eq!(code(&node.gql(None, Some(&admin), RESTORE, restore(&first_id, "copy")).await), "NOT_FOUND");
    assert_eq!(code(&node.gql(None, Some(&admin), RESTORE, restore("1; DROP", "copy")).await), "BAD_USER_INPUT");
    let r = node.gql(None, Some(&admin), RESTORE, restore(&second_id, "acme-copy")).await;
    assert_eq!(
        r["data"]["restoreTenant"],
        json!({ "slug": "acme-copy", "name": "Tenant acme", "status": "ACTIVE" }),
        "{r}"
    );

    // The clone: the same people (the owner signs in with the same password),
    // roles, modules and records; no sessions; carol erased.
    let copy_owner = token_of(&node.login("acme-copy", "owner@acme.test", "owner-password").await, "login");
    let users = node.gql(Some("acme-copy"), Some(&copy_owner), USERS, json!({})).await;
    let emails: Vec<&str> =
        users["data"]["users"]["nodes"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
    assert!(emails.contains(&"owner@acme.test") && emails.contains(&"bob@example.com"), "{users}");
    assert!(!emails.contains(&"carol@example.com"), "an erased person came back: {users}");
    assert_eq!(code(&node.login("acme-copy", "carol@example.com", "carols-password").await), "UNAUTHENTICATED");
    let (status, r) =
        rest(&node, "GET", "/t/acme-copy/contacts/v1/contact?email=ada@canopy.test", Some(&copy_owner), None).await;
    assert_eq!((status, r["data"][0]["name"].as_str()), (200, Some("Ada")), "{r}");
    // Bob's session of the original does not reach the clone.
    assert_eq!(code(&node.gql(Some("acme-copy"), Some(&bob), USERS, json!({})).await), "FORBIDDEN");
    // The original is untouched, and writes in the clone stay in the clone.
    let (status, _) = rest(
        &node,
        "POST",
        "/t/acme-copy/contacts/v1/contact",
        Some(&copy_owner),
        Some(json!({ "name": "Only In Copy" })),
    )
    .await;
    assert_eq!(status, 201);
    let (_, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?name=Only%20In%20Copy", Some(&owner), None).await;
    assert_eq!(r["data"], json!([]), "{r}");
    let users = node.gql(Some("acme"), Some(&owner), USERS, json!({})).await;
    assert_eq!(users["data"]["users"]["totalCount"], 2, "acme still has its owner and bob: {users}");

    // Deleting a tenant removes its backups with it.
    let r = node.gql(None, Some(&admin), "mutation { deleteTenant(input: {slug: \"acme\"}) }", json!({})).await;
    assert_eq!(r["data"]["deleteTenant"], true, "{r}");
    assert!(bucket.get(&second_id).await.is_err(), "a deleted tenant's backup is gone");
    assert_eq!(code(&node.gql(None, Some(&admin), RESTORE, restore(&second_id, "acme-again")).await), "NOT_FOUND");
}

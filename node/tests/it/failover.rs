//! `kill -9` of a `canopy` process in a cluster of three under load: its
//! tenants are served by the others once their leases lapse, and retries with
//! the same idempotency key are applied exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::*;
use crate::process::{Canopy, spawn};

const UPDATE: &str =
    "mutation($f: String!) { updateProfile(input: {firstname: $f, lastname: \"Failover\"}) { firstname } }";
/// The lease of the test's nodes: a dead node's tenants move within it.
const LEASE_SECS: u64 = 5;

async fn post(url: &str, tenant: &str, token: &str, query: &str, vars: Value, key: Option<&str>) -> Option<Value> {
    let mut req = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(20))
        .header("content-type", "application/json")
        .header("x-tenant-id", tenant)
        .header("authorization", format!("Bearer {token}"))
        .body(json!({ "query": query, "variables": vars }).to_string());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    // A node killed mid-request drops the connection: no answer at all.
    let text = req.send().await.ok()?.text().await.ok()?;
    serde_json::from_str(&text).ok()
}

#[tokio::test]
async fn after_kill_9_of_a_node_its_tenants_are_served_by_the_others_and_retries_apply_once() {
    let nats = NatsServer::start();
    let creds = match nats.local().credentials() {
        canopy_node::nats::credentials::Credentials::CredsFile(p) => p.display().to_string(),
        _ => unreachable!("the test server runs with authentication"),
    };
    let auth = nats.local().auth_dir().unwrap().display().to_string();
    let master = "q0CQ4DpVYVHGTHcUmGWvE8LgxFYyXVxG5jSG7j3rgBk";
    let lease = LEASE_SECS.to_string();
    let env: Vec<(&str, &str)> = vec![
        ("CANOPY_NATS_URL", nats.url()),
        ("CANOPY_NATS_CREDS", &creds),
        ("CANOPY_NATS_AUTH_DIR", &auth),
        ("CANOPY_MASTER_KEY", master),
        ("CANOPY_LEASE_SECS", &lease),
        ("CANOPY_NODE_DEAD_AFTER_SECS", &lease),
        ("RUST_LOG", "info,surrealdb=warn,surrealkv=warn,async_nats=warn"),
    ];
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut nodes: Vec<Canopy> = dirs.iter().map(|d| spawn(d.path(), free_port(), &env)).collect();
    for n in nodes.iter_mut() {
        n.ready().await;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/graphql")).collect();
    let http = reqwest::Client::new();
    let admin = graphql(
        &http,
        &urls[0],
        None,
        None,
        LOGIN,
        json!({ "input": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } }),
    )
    .await["data"]["login"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tenants = Vec::new();
    for i in 0..6 {
        let slug = format!("k{i}");
        let email = format!("owner@{slug}.test");
        let r = graphql(
            &http,
            &urls[0],
            None,
            Some(&admin),
            CREATE_TENANT,
            json!({ "input": { "slug": slug, "name": slug, "ownerEmail": email, "ownerPassword": "owner-password" } }),
        )
        .await;
        assert_eq!(r["data"]["createTenant"]["slug"], slug.as_str(), "{r}");
        let r = graphql(
            &http,
            &urls[1],
            Some(&slug),
            None,
            LOGIN,
            json!({ "input": { "email": email, "password": "owner-password" } }),
        )
        .await;
        tenants.push((slug, r["data"]["login"]["token"].as_str().unwrap().to_owned()));
    }

    // One writer per tenant, asking the nodes in turn; a write without an
    // answer (the node died, or a typed error) is sent again with the same
    // key to the next node until it is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut writers = Vec::new();
    for (t, (slug, token)) in tenants.iter().cloned().enumerate() {
        let (urls, stop) = (urls.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut stale, mut last) = (Vec::new(), Vec::new(), String::new());
            let (mut i, mut turn) = (0usize, t);
            while !stop.load(Ordering::SeqCst) {
                let (name, key) = (format!("F{t}x{i}"), format!("{slug}-{i}"));
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    turn += 1;
                    let r = post(&urls[turn % 3], &slug, &token, UPDATE, json!({ "f": name }), Some(&key)).await;
                    match r.as_ref().and_then(|r| r["data"]["updateProfile"]["firstname"].as_str()) {
                        Some(n) if n == name => break,
                        Some(other) => {
                            stale.push(format!("{name} answered {other}"));
                            break;
                        }
                        None => {
                            if let Some(r) = &r {
                                let code = r["errors"][0]["extensions"]["code"].as_str().unwrap_or_default();
                                assert!(["UNAVAILABLE", "NOT_YET_READABLE"].contains(&code), "{r}");
                            }
                            assert!(Instant::now() < deadline, "{name} was never acknowledged: {r:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acked.push(started.elapsed());
                last = name;
                i += 1;
            }
            (slug, acked, stale, last)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill the node that owns the most tenants.
    let view = graphql_get_cluster(&http, &nodes[0], &admin).await;
    let mut owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in view["members"].as_array().unwrap() {
        let tenants: Vec<String> =
            m["tenants"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
        owned.insert(m["http"].as_str().unwrap().to_owned(), tenants);
    }
    let (victim_http, victim_tenants) =
        owned.iter().max_by_key(|(_, t)| t.len()).map(|(h, t)| (h.clone(), t.clone())).unwrap();
    assert!(!victim_tenants.is_empty(), "{view}");
    let victim = nodes.iter().position(|n| n.url("").ends_with(&victim_http)).unwrap();
    let killed_at = started.elapsed();
    nodes[victim].signal("-KILL");
    let _ = nodes[victim].exit_code().await;
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 8)).await;
    stop.store(true, Ordering::SeqCst);

    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let survivor = nodes.iter().enumerate().find(|(i, _)| *i != victim).unwrap().1;
    for w in writers {
        let (slug, acked, stale, last) = w.await.unwrap();
        assert!(stale.is_empty(), "{slug}: answered with older data: {stale:?}");
        // Served again within 15 s of the kill.
        let first_after = acked.iter().find(|at| **at > killed_at + Duration::from_millis(200));
        let waited = first_after.map(|at| *at - killed_at);
        eprintln!(
            "{slug}: {} acknowledged, served again {waited:?} after the kill (victim's: {})",
            acked.len(),
            victim_tenants.contains(&slug)
        );
        assert!(
            waited.is_some_and(|w| w < Duration::from_secs(15)),
            "{slug}: not served within 15 s of the kill: {waited:?}"
        );
        // Every key applied exactly once.
        assert_eq!(crate::cluster::profile_updates(&js, &slug).await, acked.len(), "{slug}");
        let token = &tenants.iter().find(|(s, _)| *s == slug).unwrap().1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let me = post(&survivor.url("/graphql"), &slug, token, ME, json!({}), None).await.unwrap();
            if me["data"]["me"]["firstname"] == last.as_str() {
                break;
            }
            assert!(Instant::now() < deadline, "{slug}: {me} is not the last write {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn graphql_get_cluster(http: &reqwest::Client, node: &Canopy, admin: &str) -> Value {
    let r = http.get(node.url("/cluster")).bearer_auth(admin).send().await.unwrap();
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

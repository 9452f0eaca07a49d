//! Modules end to end on a real node: the catalog, subscriptions with their
//! dependencies, migrations and seeds, records over REST with validation from
//! the manifest, an upgrade with its record transformations, and a rebuild
//! that ends with the same read models.

use serde_json::{Value, json};

use crate::harness::*;

const MODULES: &str = "{ modules { name versions { version fullVersion dependsOn tables upgradesFrom } } }";
const HELD: &str = "{ tenantModules { name version fullVersion migrations { name checksum kind } } }";
const HELD_UPGRADING: &str = "{ tenantModules { name version upgradingTo } }";
const SUBSCRIBE: &str = "mutation($n: String!, $v: String!, $d: Boolean!) { subscribeModule(input: {name: $n, version: $v, withDependencies: $d}) { applied steps { module action detail } } }";
const UNSUBSCRIBE: &str = "mutation($n: String!) { unsubscribeModule(name: $n) { steps { module action } } }";
const UPGRADE: &str = "mutation($n: String!, $to: String!) { upgradeModule(input: {name: $n, to: $to}) { steps { module action detail } } }";
const MIGRATE: &str = "mutation($m: String, $dry: Boolean!, $f: Boolean!) { migrate(input: {module: $m, dryRun: $dry, force: $f}) { applied steps { module action detail } } }";
const SEED: &str = "mutation($m: String) { seedModules(module: $m) { steps { module action detail } } }";
const DESEED: &str = "mutation($m: String) { deseedModules(module: $m) { steps { module action detail } } }";

/// A REST call: method, path, bearer token and JSON body; status and JSON answer.
pub async fn rest(node: &TestNode, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method, node.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// A raw body (not JSON) to a REST path.
async fn rest_raw(node: &TestNode, path: &str, token: &str, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(node.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap())
}

fn rest_code(v: &Value) -> &str {
    v["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {v}"))
}

fn steps(r: &Value, field: &str) -> Vec<(String, String, String)> {
    r["data"][field]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|s| {
            let t = |k: &str| s[k].as_str().unwrap().to_owned();
            (t("module"), t("action"), t("detail"))
        })
        .collect()
}

pub async fn subscribe(node: &TestNode, token: &str, name: &str, version: &str, deps: bool) -> Value {
    node.gql(Some("acme"), Some(token), SUBSCRIBE, json!({ "n": name, "v": version, "d": deps })).await
}

/// Every record of a table, as the REST list shows them (up to 100).
async fn list(node: &TestNode, token: &str, path: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, r) = rest(node, "GET", &format!("{path}{sep}first=100"), Some(token), None).await;
    assert_eq!(status, 200, "{r}");
    r["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_tenant_subscribes_deals_with_its_dependency_and_works_with_records_over_rest() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, globex, bob, .. } = node.acme_globex_bob().await;

    // The catalog lists what ships.
    let catalog = node.gql(Some("acme"), Some(&owner), MODULES, json!({})).await;
    let names: Vec<&str> =
        catalog["data"]["modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["contacts", "deals"], "{catalog}");
    assert_eq!(catalog["data"]["modules"][1]["versions"][0]["dependsOn"], json!(["contacts@v1"]));
    assert_eq!(catalog["data"]["modules"][0]["versions"][1]["upgradesFrom"], "v1");

    // A missing dependency is refused with its name, and nothing is appended.
    let before = last_seq(&nats).await;
    let r = subscribe(&node, &owner, "deals", "v1", false).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("contacts@v1"), "{r}");
    for (name, version) in [("deals", "v9"), ("nope", "v1"), ("deals", "V1"), ("deals", "v1z"), ("Deals", "v1")] {
        let r = subscribe(&node, &owner, name, version, true).await;
        assert!(["BAD_USER_INPUT", "NOT_FOUND"].contains(&code(&r)), "{name}@{version}: {r}");
    }
    // Only `manage_modules` subscribes: a member may not.
    assert_eq!(code(&subscribe(&node, &bob, "contacts", "v1", false).await), "FORBIDDEN");
    assert_eq!(last_seq(&nats).await, before, "a refused subscription appends nothing");

    // With its dependency, in one command: contacts first, then deals, each
    // with its migrations and main seeds.
    let r = subscribe(&node, &owner, "deals", "1.0", true).await;
    let done = steps(&r, "subscribeModule");
    let subscribed: Vec<&str> = done.iter().filter(|s| s.1 == "subscribe").map(|s| s.0.as_str()).collect();
    assert_eq!(subscribed, ["contacts@v1", "deals@v1"], "{r}");
    assert!(done.iter().any(|s| s.0 == "contacts@v1" && s.1 == "migration" && s.2 == "0001_init.surql"), "{r}");
    let held = node.gql(Some("acme"), Some(&owner), HELD, json!({})).await;
    let modules = held["data"]["tenantModules"].as_array().unwrap_or_else(|| panic!("{held}"));
    assert_eq!(modules.len(), 2, "{held}");
    assert_eq!(modules[0]["migrations"][0]["checksum"].as_str().unwrap().len(), 64, "{held}");
    // Subscribing again is refused; one version at a time.
    assert_eq!(code(&subscribe(&node, &owner, "contacts", "v1", false).await), "BAD_USER_INPUT");
    assert_eq!(code(&subscribe(&node, &owner, "contacts", "v2", false).await), "BAD_USER_INPUT");

    // The main seeds are there: one company and one contact.
    let companies = list(&node, &owner, "/t/acme/contacts/v1/company").await;
    assert_eq!(companies.len(), 1, "{companies:?}");
    assert_eq!(companies[0]["name"], "Example Ltd");

    // Records over REST: v1, v1.2 and v1.2.0 all reach v1, and the answer says so.
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1.2/company", Some(&owner), Some(json!({ "name": "Canopy Ltd" }))).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["version"], json!({ "asked": "v1.2", "served": "1.2.0", "module": "contacts@v1" }));
    let company = r["data"]["id"].as_str().unwrap().to_owned();
    let ada = json!({ "name": "Ada Lovelace", "email": "ada@canopy.test", "company": company, "last_contacted_at": "2026-12-01T10:00:00+01:00" });
    let (status, r) = rest(&node, "POST", "/t/acme/contacts/v1.2.0/contact", Some(&owner), Some(ada)).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["data"]["status"], "lead", "the default applies: {r}");
    assert_eq!(r["data"]["last_contacted_at"], "2026-12-01T09:00:00Z", "{r}");
    let ada_id = r["data"]["id"].as_str().unwrap().to_owned();
    // Read-your-writes: the list shows it at once.
    let (_, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?email=ada@canopy.test", Some(&owner), None).await;
    assert_eq!(r["data"][0]["id"], ada_id.as_str(), "{r}");
    assert_eq!(r["page"]["totalCount"], 1, "{r}");
    let (status, r) = rest(&node, "GET", &format!("/t/acme/contacts/v1/contact/{ada_id}"), Some(&bob), None).await;
    assert_eq!((status, r["data"]["name"].as_str()), (200, Some("Ada Lovelace")), "a member reads: {r}");

    // A deal referencing the contact, with a decimal amount.
    let deal = json!({ "title": "Annual plan", "amount": "1200.50", "currency": "gbp", "contact": ada_id, "close_date": "2027-01-31T00:00:00Z" });
    let (status, r) = rest(&node, "POST", "/t/acme/deals/v1/deal", Some(&owner), Some(deal)).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!((r["data"]["amount"].as_str(), r["data"]["probability"].as_i64()), (Some("1200.5"), Some(10)), "{r}");
    let deal_id = r["data"]["id"].as_str().unwrap().to_owned();
    let (_, r) = rest(&node, "GET", "/t/acme/deals/v1/deal?amount.gt=1000&sort=-amount", Some(&owner), None).await;
    assert_eq!(r["data"].as_array().map(Vec::len), Some(1), "{r}");
    let (_, r) = rest(&node, "GET", "/t/acme/deals/v1/deal?amount.gt=5000", Some(&owner), None).await;
    assert_eq!(r["data"], json!([]), "{r}");

    // Bad input: a typed error naming the field, and nothing appended.
    let before = last_seq(&nats).await;
    let bad: Vec<(Value, &str)> = vec![
        (json!({ "name": "X", "shoe_size": 42 }), "shoe_size"),
        (json!({ "name": 42 }), "name"),
        (json!({ "name": "x".repeat(201) }), "name"),
        (json!({ "name": "X", "status": "prospect" }), "status"),
        (json!({ "email": "no-name@canopy.test" }), "name"),
        (json!({ "name": "X", "company": "not-a-uuid" }), "company"),
        (json!({ "name": "X", "company": "00000000-0000-4000-8000-000000000000" }), "company"),
        (json!({ "name": "X", "company": deal_id }), "company"),
        (json!({ "name": "X", "email": "ada@canopy.test" }), "email"),
        (json!({ "name": "X", "last_contacted_at": "yesterday" }), "last_contacted_at"),
    ];
    for (body, field) in bad {
        let (status, r) = rest(&node, "POST", "/t/acme/contacts/v1/contact", Some(&owner), Some(body.clone())).await;
        assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{body}: {r}");
        assert!(r["errors"][0]["message"].as_str().unwrap().starts_with(field), "{body}: {r}");
    }
    let (status, r) = rest_raw(&node, "/t/acme/contacts/v1/contact", &owner, "{\"name\": ").await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?shoe_size=1", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?first=1000", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?sort=password", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact?after=%27%3B%20DELETE", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact/1%3BDELETE", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    // Writing needs `write_contacts`: a member reads but does not write.
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/company", Some(&bob), Some(json!({ "name": "Bob's" }))).await;
    assert_eq!((status, rest_code(&r)), (403, "FORBIDDEN"), "{r}");
    assert_eq!(last_seq(&nats).await, before, "refused record commands append nothing");

    // A retried create (same idempotency key) gets the same record once; the
    // key reused for another record is refused.
    let keyed = |body: Value| {
        let (node, owner) = (&node, &owner);
        async move {
            let res = reqwest::Client::new()
                .post(node.url("/t/acme/contacts/v1/company"))
                .header("authorization", format!("Bearer {owner}"))
                .header("idempotency-key", "company-once")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, serde_json::from_str::<Value>(&res.text().await.unwrap()).unwrap())
        }
    };
    let (first_status, first) = keyed(json!({ "name": "Once Ltd" })).await;
    let (again_status, again) = keyed(json!({ "name": "Once Ltd" })).await;
    assert_eq!((first_status, again_status), (201, 201), "{first} {again}");
    assert_eq!(first["data"]["id"], again["data"]["id"]);
    let (status, r) = keyed(json!({ "name": "Twice Ltd" })).await;
    assert_eq!((status, rest_code(&r)), (409, "CONFLICT"), "{r}");

    // SurrealQL in a value is a value.
    let sneaky = "x'; REMOVE TABLE mod_contacts_contact; --";
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/company", Some(&owner), Some(json!({ "name": sneaky }))).await;
    assert_eq!(status, 201, "{r}");
    let (_, r) =
        rest(&node, "GET", &format!("/t/acme/contacts/v1/company?name={}", urlencode(sneaky)), Some(&owner), None)
            .await;
    assert_eq!(r["data"][0]["name"], sneaky, "{r}");
    assert_eq!(list(&node, &owner, "/t/acme/contacts/v1/contact").await.len(), 2, "the table is still there");

    // What the tenant does not hold answers 404 with a clear message.
    for (path, says) in [
        ("/t/acme/contacts/v2/contact", "holds contacts@v1, not v2"),
        ("/t/acme/billing/v1/invoice", "no module billing"),
        ("/t/acme/contacts/v1/invoice", "has no table invoice"),
        ("/t/acme/contacts/1/contact", "not a version"),
        ("/t/globex/contacts/v1/contact", "does not hold the module contacts"),
    ] {
        let token = if path.starts_with("/t/globex") { &globex } else { &owner };
        let (status, r) = rest(&node, "GET", path, Some(token), None).await;
        assert_eq!((status, rest_code(&r)), (404, "NOT_FOUND"), "{path}: {r}");
        assert!(r["errors"][0]["message"].as_str().unwrap().contains(says), "{path}: {r}");
    }
    // Another tenant's token never reaches acme's records.
    let (status, r) = rest(&node, "GET", "/t/acme/contacts/v1/contact", Some(&globex), None).await;
    assert_eq!((status, rest_code(&r)), (403, "FORBIDDEN"), "{r}");

    // PATCH changes what it names; null clears; DELETE removes.
    let path = format!("/t/acme/contacts/v1/contact/{ada_id}");
    let (status, r) =
        rest(&node, "PATCH", &path, Some(&owner), Some(json!({ "status": "customer", "company": null }))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["data"]["status"].as_str(), r["data"]["company"].is_null()), (Some("customer"), true), "{r}");
    let (status, r) = rest(&node, "PATCH", &path, Some(&owner), Some(json!({ "name": null }))).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    // A module a subscribed module depends on stays.
    let r = node.gql(Some("acme"), Some(&owner), UNSUBSCRIBE, json!({ "n": "contacts" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("deals@v1"), "{r}");
    let (status, _) = rest(&node, "DELETE", &format!("/t/acme/deals/v1/deal/{deal_id}"), Some(&owner), None).await;
    assert_eq!(status, 200);
    let (status, _) = rest(&node, "DELETE", &path, Some(&owner), None).await;
    assert_eq!(status, 200);
    let (status, r) = rest(&node, "GET", &path, Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (404, "NOT_FOUND"), "{r}");
    // Its email is free again.
    let again = json!({ "name": "Ada Again", "email": "ada@canopy.test" });
    let (status, r) = rest(&node, "POST", "/t/acme/contacts/v1/contact", Some(&owner), Some(again)).await;
    assert_eq!(status, 201, "{r}");
}

#[tokio::test]
async fn personal_fields_are_sealed_in_the_log_and_erased_with_their_record() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = subscribe(&node, &owner, "contacts", "v1", false).await;
    assert!(r["errors"].is_null(), "{r}");
    let contacts = "/t/acme/contacts/v1/contact";
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/company", Some(&owner), Some(json!({ "name": "Plainview Ltd" })))
            .await;
    assert_eq!(status, 201, "{r}");
    let ada = json!({ "name": "Ada Sealedname", "email": "ada.sealed@canopy.test", "phone": "+44 20 7946 0991", "notes": "met at Kew" });
    let (status, r) = rest(&node, "POST", contacts, Some(&owner), Some(ada.clone())).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["data"]["email"], "ada.sealed@canopy.test", "the answer is in clear: {r}");
    let id = r["data"]["id"].as_str().unwrap().to_owned();
    // A unique personal value is still unique, and a filter on it still works.
    let (status, r) =
        rest(&node, "POST", contacts, Some(&owner), Some(json!({ "name": "Copy", "email": "ada.sealed@canopy.test" })))
            .await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
    let found = list(&node, &owner, &format!("{contacts}?email=ada.sealed@canopy.test")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["phone"], "+44 20 7946 0991");
    let (status, r) =
        rest(&node, "PATCH", &format!("{contacts}/{id}"), Some(&owner), Some(json!({ "name": "Ada Patchedname" })))
            .await;
    assert_eq!((status, r["data"]["name"].as_str()), (200, Some("Ada Patchedname")), "{r}");
    assert_eq!(r["data"]["email"], "ada.sealed@canopy.test", "an untouched personal field keeps its value: {r}");
    // Sealing the same value twice gives two ciphertexts; a patch that
    // changes nothing is still seen as such and appends nothing.
    let updates = count_events(&nats, "RecordUpdated").await;
    let (status, r) =
        rest(&node, "PATCH", &format!("{contacts}/{id}"), Some(&owner), Some(json!({ "name": "Ada Patchedname" })))
            .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(count_events(&nats, "RecordUpdated").await, updates);

    // The log holds none of it in clear, but the company's name, which is not personal, is.
    let log: Vec<String> =
        all_events(&nats).await.into_iter().map(|(_, b)| String::from_utf8_lossy(&b).into_owned()).collect();
    assert!(log.iter().any(|e| e.contains("Plainview Ltd")), "the check sees clear values");
    for secret in ["Sealedname", "Patchedname", "ada.sealed", "+44 20 7946 0991", "met at Kew"] {
        assert!(
            log.iter().all(|e| !e.contains(secret)),
            "{secret} is in the log in clear: {:?}",
            log.iter().find(|e| e.contains(secret))
        );
    }
    let created = log.iter().find(|e| e.contains("RecordCreated") && e.contains(&id)).unwrap();
    let created: Value = serde_json::from_str(created).unwrap();
    let sealed: actors::store::seal::Sealed = serde_json::from_value(created["data"]["values"]["email"].clone())
        .unwrap_or_else(|e| panic!("the email is not a sealed value ({e}): {created}"));
    let ring = crate::lifecycle::key_ring(&nats, &node).await;
    assert_eq!(ring.open(&sealed).await.unwrap(), b"\"ada.sealed@canopy.test\"");

    // Deleting the record destroys its key: the log can no longer be read for
    // it, and the value is free again.
    let (status, _) = rest(&node, "DELETE", &format!("{contacts}/{id}"), Some(&owner), None).await;
    assert_eq!(status, 200);
    let fresh = crate::lifecycle::key_ring(&nats, &node).await;
    assert!(fresh.open(&sealed).await.is_err(), "a deleted record's personal values still open");
    let (status, r) = rest(&node, "POST", contacts, Some(&owner), Some(ada)).await;
    assert_eq!(status, 201, "{r}");

    // A deseed erases the temporary records it removes.
    let before: Vec<String> =
        list(&node, &owner, contacts).await.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    let r = node.gql(Some("acme"), Some(&owner), SEED, json!({ "m": "contacts" })).await;
    assert!(r["errors"].is_null(), "{r}");
    let temp: Vec<String> = list(&node, &owner, contacts)
        .await
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .filter(|c| !before.contains(c))
        .collect();
    assert!(!temp.is_empty());
    let scope = actors::domain::tenant::Scope::Tenant(actors::domain::tenant::TenantId::parse("acme").unwrap());
    for t in &temp {
        assert!(fresh.existing_key(&actors::store::seal::person_key_name(&scope, t)).await.is_ok(), "{t} has a key");
    }
    let r = node.gql(Some("acme"), Some(&owner), DESEED, json!({ "m": null })).await;
    assert!(r["errors"].is_null(), "{r}");
    let after = crate::lifecycle::key_ring(&nats, &node).await;
    for t in &temp {
        assert!(
            after.existing_key(&actors::store::seal::person_key_name(&scope, t)).await.is_err(),
            "{t} kept its key"
        );
    }
}

/// Creates `n` contacts with distinct emails in acme's contacts@v1, 16 at a time.
pub async fn many_contacts(node: &TestNode, owner: &str, n: usize) {
    use futures::StreamExt;
    let made: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| async move {
            let body = json!({ "name": format!("Bulk Person{i:04}"), "email": format!("bulk{i}@canopy.test") });
            rest(node, "POST", "/t/acme/contacts/v1/contact", Some(owner), Some(body)).await.0
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(made.iter().all(|s| *s == 201), "{made:?}");
}

/// How many events of `event_type` the log holds.
async fn count_events(nats: &NatsServer, event_type: &str) -> usize {
    all_events(nats).await.iter().filter(|(subject, _)| subject.ends_with(&format!(".{event_type}"))).count()
}

#[tokio::test]
async fn an_upgrade_larger_than_one_batch_rewrites_every_record_while_record_writes_wait() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    assert!(subscribe(&node, &owner, "contacts", "v1", false).await["errors"].is_null());
    // 600 contacts with a unique email: 1,200 writes in the upgrade, more than one batch holds.
    many_contacts(&node, &owner, 600).await;
    let probe = list(&node, &owner, "/t/acme/contacts/v1/contact?name=Bulk Person0007").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // While the upgrade runs, a writer keeps changing one contact: each write
    // is either done before the upgrade starts or refused with CONFLICT
    // until it is over; none fails otherwise and none is lost.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let path = format!("/t/acme/contacts/v1/contact/{probe}");
    let writer = async {
        let mut answers = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let (status, r) =
                rest(&node, "PATCH", &path, Some(&owner), Some(json!({ "notes": format!("note {i}") }))).await;
            answers.push((status, if status == 200 { String::new() } else { rest_code(&r).to_owned() }, i));
        }
        answers
    };
    let upgrade = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = node.gql(Some("acme"), Some(&owner), UPGRADE, json!({ "n": "contacts", "to": "v2" })).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let (answers, r) = tokio::join!(writer, upgrade);
    let done = steps(&r, "upgradeModule");
    // 600 contacts, the main seed's contact and its company.
    assert!(done.iter().any(|s| s.1 == "transform" && s.2 == "602 records"), "{r}");
    for (status, code, _) in &answers {
        assert!(*status == 200 || (*status == 409 && code == "CONFLICT") || *status == 404, "{answers:?}");
    }
    assert!(answers.iter().any(|a| a.0 == 409), "no write was refused during the upgrade: {answers:?}");

    assert_eq!(count_events(&nats, "ModuleUpgradeStarted").await, 1);
    assert_eq!(count_events(&nats, "RecordTransformed").await, 602);
    let held = node.gql(Some("acme"), Some(&owner), HELD_UPGRADING, json!({})).await;
    assert_eq!(held["data"]["tenantModules"][0]["version"], "v2", "{held}");
    assert!(held["data"]["tenantModules"][0]["upgradingTo"].is_null(), "{held}");
    let (_, page) = rest(&node, "GET", "/t/acme/contacts/v2/contact?first=1", Some(&owner), None).await;
    assert_eq!(page["page"]["totalCount"], 601, "{page}");
    // The last accepted note is the one the record kept through its transformation.
    let (_, r) = rest(&node, "GET", &format!("/t/acme/contacts/v2/contact/{probe}"), Some(&owner), None).await;
    assert_eq!(
        (r["data"]["first_name"].as_str(), r["data"]["last_name"].as_str()),
        (Some("Bulk"), Some("Person0007")),
        "{r}"
    );
    let last_ok = answers.iter().filter(|a| a.0 == 200).map(|a| a.2).max();
    assert_eq!(r["data"]["notes"].as_str().map(str::to_owned), last_ok.map(|i| format!("note {i}")), "{r}");
    // Writes work again, at v2.
    let (status, r) = rest(
        &node,
        "PATCH",
        &format!("/t/acme/contacts/v2/contact/{probe}"),
        Some(&owner),
        Some(json!({ "job_title": "Engineer" })),
    )
    .await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn an_upgrade_cut_off_after_it_started_is_finished_by_migrate() {
    use actors::domain::tenant_modules::{MODULES_ID, ModuleUpgradeStarted, Modules, ModulesEvent};
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.idle_timeout_secs = 1).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    assert!(subscribe(&node, &owner, "contacts", "v1", false).await["errors"].is_null());
    many_contacts(&node, &owner, 5).await;
    let probe = list(&node, &owner, "/t/acme/contacts/v1/contact?name=Bulk Person0001").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The tree passivates; then the log gets what a node that died right
    // after starting a batched upgrade leaves: its start, and nothing else.
    passivated(&node).await;
    let store = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap().0;
    let scope = actors::domain::tenant::Scope::Tenant(actors::domain::tenant::TenantId::parse("acme").unwrap());
    let loaded = actors::tree::executor::load::<Modules>(&store, &scope, MODULES_ID).await.unwrap();
    let command_id = actors::domain::ids::CommandId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let stamp = actors::store::event_store::Stamp { command_id, digest: "cut-off".into(), actor: None, client: None };
    let started = ModulesEvent::ModuleUpgradeStarted(ModuleUpgradeStarted {
        module: "contacts".into(),
        from: 1,
        to: 2,
        records: 7,
    });
    let batch =
        actors::store::event_store::batch_for::<Modules>(&scope, MODULES_ID, loaded.version, &stamp, &[started], &[])
            .unwrap();
    store.append(&stamp.command_id, batch).await.unwrap();

    // Record writes wait for the upgrade, and the tenant's modules say why.
    let path = format!("/t/acme/contacts/v1/contact/{probe}");
    let (status, r) = rest(&node, "PATCH", &path, Some(&owner), Some(json!({ "notes": "during" }))).await;
    assert_eq!((status, rest_code(&r)), (409, "CONFLICT"), "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("being upgraded to v2"), "{r}");
    let held = node.gql(Some("acme"), Some(&owner), HELD_UPGRADING, json!({})).await;
    assert_eq!(held["data"]["tenantModules"][0]["upgradingTo"], "v2", "{held}");
    // Another target is refused; migrate finishes the one that started.
    let r = node.gql(Some("acme"), Some(&owner), UPGRADE, json!({ "n": "contacts", "to": "v3" })).await;
    assert!(r["errors"].is_array(), "{r}");
    let (status, r) = rest(&node, "POST", "/t/acme/migrate", Some(&owner), None).await;
    assert_eq!(status, 200, "{r}");
    assert!(r.to_string().contains("resumed"), "{r}");
    let held = node.gql(Some("acme"), Some(&owner), HELD_UPGRADING, json!({})).await;
    assert_eq!(held["data"]["tenantModules"][0]["version"], "v2", "{held}");
    assert!(held["data"]["tenantModules"][0]["upgradingTo"].is_null(), "{held}");
    assert_eq!(count_events(&nats, "RecordTransformed").await, 7);
    let (status, r) = rest(
        &node,
        "PATCH",
        &format!("/t/acme/contacts/v2/contact/{probe}"),
        Some(&owner),
        Some(json!({ "notes": "after" })),
    )
    .await;
    assert_eq!((status, r["data"]["first_name"].as_str()), (200, Some("Bulk")), "{r}");
}

/// Waits (at most 10 s) until the node holds no tenant tree: every tree
/// passivated, and its module actors with it.
async fn passivated(node: &TestNode) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.metric("canopy_tenant_trees").await > 0 {
        assert!(std::time::Instant::now() < deadline, "the tree did not passivate");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test]
async fn seeds_deseeds_and_an_upgrade_transform_records_and_a_rebuild_ends_the_same() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = subscribe(&node, &owner, "contacts", "v1", false).await;
    assert!(r["errors"].is_null(), "{r}");
    let contacts = "/t/acme/contacts/v1/contact";
    assert_eq!(list(&node, &owner, contacts).await.len(), 1, "the main seed");

    // Migrating again changes nothing: the main seeds were applied once.
    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&owner), MIGRATE, json!({ "m": null, "dry": false, "f": false })).await;
    assert_eq!(steps(&r, "migrate"), vec![], "{r}");
    assert_eq!(last_seq(&nats).await, before);

    // Temporary seeds come and go; a record a user changed stays, and so does one a user made.
    let r = node.gql(Some("acme"), Some(&owner), SEED, json!({ "m": "contacts" })).await;
    assert!(r["errors"].is_null(), "{r}");
    let all = list(&node, &owner, contacts).await;
    let registry = canopy_node::modules::load(None).await.unwrap();
    let temp = registry.get("contacts", 1).unwrap().temp_seeds.iter().filter(|s| s.table == "contact").count();
    assert!(temp >= 2, "the shipped temporary seeds have contacts");
    assert_eq!(all.len(), 1 + temp, "{all:?}");
    let grace = all.iter().find(|c| c["name"] == "Grace Hopper").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, r) =
        rest(&node, "PATCH", &format!("{contacts}/{grace}"), Some(&owner), Some(json!({ "status": "customer" }))).await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = rest(&node, "POST", contacts, Some(&owner), Some(json!({ "name": "Mine Own" }))).await;
    assert_eq!(status, 201, "{r}");
    let r = node.gql(Some("acme"), Some(&owner), DESEED, json!({ "m": null })).await;
    assert!(r["errors"].is_null(), "{r}");
    let names: std::collections::BTreeSet<String> =
        list(&node, &owner, contacts).await.iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
    let expected: std::collections::BTreeSet<String> =
        ["Alex Example", "Grace Hopper", "Mine Own"].into_iter().map(String::from).collect();
    assert_eq!(names, expected);

    // Force writes the main seeds back over their own records.
    let alex =
        list(&node, &owner, &format!("{contacts}?name=Alex Example")).await[0]["id"].as_str().unwrap().to_owned();
    let (status, _) =
        rest(&node, "PATCH", &format!("{contacts}/{alex}"), Some(&owner), Some(json!({ "status": "former" }))).await;
    assert_eq!(status, 200);
    let (status, r) = rest(&node, "POST", "/t/acme/migrate/force", Some(&owner), None).await;
    assert_eq!(status, 200, "{r}");
    let (_, r) = rest(&node, "GET", &format!("{contacts}/{alex}"), Some(&owner), None).await;
    assert_eq!(r["data"]["status"], "customer", "{r}");

    // A dry run of the upgrade's migration plan changes nothing; the upgrade
    // splits names and renames phone, and v1 is gone.
    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&owner), MIGRATE, json!({ "m": "contacts", "dry": true, "f": false })).await;
    assert_eq!(r["data"]["migrate"]["applied"], false, "{r}");
    assert_eq!(last_seq(&nats).await, before);
    let r = node.gql(Some("acme"), Some(&owner), UPGRADE, json!({ "n": "contacts", "to": "v2" })).await;
    let done = steps(&r, "upgradeModule");
    assert!(done.iter().any(|s| s.1 == "transform" && s.2.contains("split name")), "{r}");
    let (status, r) = rest(&node, "GET", contacts, Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (404, "NOT_FOUND"), "{r}");
    let upgraded = list(&node, &owner, "/t/acme/contacts/v2/contact").await;
    let grace_v2 = upgraded.iter().find(|c| c["id"] == grace.as_str()).unwrap_or_else(|| panic!("{upgraded:?}"));
    assert_eq!((grace_v2["first_name"].as_str(), grace_v2["last_name"].as_str()), (Some("Grace"), Some("Hopper")));
    assert_eq!(grace_v2["phone_number"], "+1 555 0134", "{grace_v2}");
    assert!(grace_v2.get("name").is_none() && grace_v2.get("phone").is_none(), "{grace_v2}");
    let mine = upgraded.iter().find(|c| c["first_name"] == "Mine").unwrap();
    assert_eq!(mine["last_name"], "Own");
    let held = node.gql(Some("acme"), Some(&owner), HELD, json!({})).await;
    assert_eq!(held["data"]["tenantModules"][0]["version"], "v2", "{held}");

    // The read models rebuilt from the log end the same.
    let rm = canopy_node::read_model::ReadModel::connect(&canopy_node::config::Config {
        surreal_url: Some("mem://".into()),
        ..canopy_node::config::Config::default()
    })
    .await
    .unwrap();
    let store = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap().0;
    let ring = crate::lifecycle::key_ring(&nats, &node).await;
    canopy_node::projection::rebuild(&rm, &store, &ring, registry).await.unwrap();
    let scope = actors::domain::tenant::Scope::Tenant(actors::domain::tenant::TenantId::parse("acme").unwrap());
    let q = |table: &str| canopy_node::read_model::RecordQuery {
        table: table.into(),
        filters: vec![],
        order: "created_at".into(),
        order_cast: "",
        descending: false,
        after: None,
        limit: 100,
        fields: vec![
            ("first_name".into(), ""),
            ("last_name".into(), ""),
            ("phone_number".into(), ""),
            ("status".into(), ""),
        ],
    };
    let (rebuilt, n) = rm.records(&scope, &q("mod_contacts_contact")).await.unwrap();
    assert_eq!(n as usize, upgraded.len());
    for row in rebuilt {
        let live = upgraded.iter().find(|c| c["id"] == row["record_id"]).unwrap();
        for f in ["first_name", "last_name", "phone_number", "status"] {
            assert_eq!(row.get(f).unwrap_or(&Value::Null), &live[f], "{f} of {row:?}");
        }
    }
}

/// POSTs a GraphQL request to a module version's endpoint.
async fn module_gql(node: &TestNode, path: &str, token: &str, query: &str, variables: Value) -> Value {
    let http = reqwest::Client::new();
    graphql(&http, &node.url(path), None, Some(token), query, variables).await
}

#[tokio::test]
async fn a_module_version_has_a_typed_graphql_schema_with_batched_references() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, bob, .. } = node.acme_globex_bob().await;
    let r = subscribe(&node, &owner, "deals", "v1", true).await;
    assert!(r["errors"].is_null(), "{r}");
    let contacts = "/t/acme/contacts/v1/graphql";
    let deals = "/t/acme/deals/v1.0/graphql";

    // The SDL is typed from the manifest and downloadable.
    let sdl = reqwest::Client::new()
        .get(node.url(contacts))
        .header("authorization", format!("Bearer {owner}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "type Contact",
        "status: ContactStatus\n",
        "name: String!",
        "company: Company",
        "contacts(filter: ContactFilter",
        "createCompany(input: CompanyInput!)",
        "enum ContactStatus",
    ] {
        assert!(sdl.contains(expected), "{expected} missing from:\n{sdl}");
    }

    // Create with read-your-writes: the answer and the next query show the record.
    const CREATE_COMPANY: &str = "mutation($n: String!) { createCompany(input: {name: $n}) { id name } }";
    let r = module_gql(&node, contacts, &owner, CREATE_COMPANY, json!({ "n": "Canopy Ltd" })).await;
    let company = r["data"]["createCompany"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    const CREATE_CONTACT: &str =
        "mutation($i: ContactInput!) { createContact(input: $i) { id name status company { name } } }";
    let r = module_gql(
        &node,
        contacts,
        &owner,
        CREATE_CONTACT,
        json!({ "i": { "name": "Ada", "company": company, "status": "customer" } }),
    )
    .await;
    assert_eq!(r["data"]["createContact"]["company"]["name"], "Canopy Ltd", "{r}");
    assert_eq!(r["data"]["createContact"]["status"], "customer", "{r}");
    let ada = r["data"]["createContact"]["id"].as_str().unwrap().to_owned();

    // Validation from the manifest, typed, appending nothing; a member may not write.
    let before = last_seq(&nats).await;
    let r = module_gql(&node, contacts, &owner, CREATE_CONTACT, json!({ "i": { "name": "x".repeat(201) } })).await;
    assert_eq!((code(&r), r["errors"][0]["extensions"]["field"].as_str()), ("BAD_USER_INPUT", Some("name")), "{r}");
    let r = module_gql(&node, contacts, &owner, CREATE_CONTACT, json!({ "i": { "email": "a@b.c" } })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let r = module_gql(&node, contacts, &owner, CREATE_CONTACT, json!({ "i": { "name": "X", "status": "prospect" } }))
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "an unknown enum value: {r}");
    let r = module_gql(&node, contacts, &bob, CREATE_COMPANY, json!({ "n": "Bob's" })).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = module_gql(&node, contacts, &owner, "{ contact(id: \"1; DELETE\") { id } }", json!({})).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert_eq!(last_seq(&nats).await, before);

    // 100 deals, each with a contact that has a company: a page reads the
    // deals once and each referenced table once, however many records.
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = module_gql(
            &node,
            contacts,
            &owner,
            CREATE_CONTACT,
            json!({ "i": { "name": format!("C{i}"), "company": company } }),
        )
        .await;
        ids.push(r["data"]["createContact"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned());
    }
    ids.push(ada.clone());
    const CREATE_DEAL: &str = "mutation($i: DealInput!) { createDeal(input: $i) { id } }";
    for i in 0..100 {
        let deal = json!({ "title": format!("Deal {i:03}"), "amount": format!("{}.50", 100 + i), "contact": ids[i % ids.len()], "probability": i % 100 });
        let r = module_gql(&node, deals, &owner, CREATE_DEAL, json!({ "i": deal })).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    const PAGE: &str = "query($f: DealFilter, $o: DealOrder, $a: String) { deals(filter: $f, orderBy: $o, first: 100, after: $a) { totalCount pageInfo { hasNextPage endCursor } nodes { title amount contact { name company { name } } } } }";
    let reads = node.metric("canopy_read_model_reads_total").await;
    let r = module_gql(&node, deals, &owner, PAGE, json!({ "o": { "field": "title" } })).await;
    let spent = node.metric("canopy_read_model_reads_total").await - reads;
    let nodes = r["data"]["deals"]["nodes"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(nodes.len(), 100);
    assert_eq!(r["data"]["deals"]["totalCount"], 100);
    assert_eq!(nodes[0]["title"], "Deal 000");
    assert_eq!(nodes[7]["contact"]["company"]["name"], "Canopy Ltd", "{}", nodes[7]);
    // The page (with its count), the subscription check, the contacts and the companies.
    assert!(spent <= 5, "a page of 100 with references took {spent} read-model queries");

    // Typed filters and cursor pagination.
    let r = module_gql(
        &node,
        deals,
        &owner,
        PAGE,
        json!({ "f": { "amount": { "gte": "150" }, "probability": { "lt": 60 } } }),
    )
    .await;
    assert_eq!(r["data"]["deals"]["totalCount"], 10, "amounts 150.50 to 159.50: {r}");
    let r = module_gql(&node, deals, &owner, PAGE, json!({ "f": { "title": { "contains": "deal 09" } } })).await;
    assert_eq!(r["data"]["deals"]["totalCount"], 10, "{r}");
    let r = module_gql(&node, deals, &owner, PAGE, json!({ "f": { "contact": { "in": [ada] } } })).await;
    assert_eq!(r["data"]["deals"]["totalCount"], 20, "{r}");
    const PAGES: &str = "query($a: String) { deals(first: 30, after: $a, orderBy: {field: amount, direction: DESC}) { pageInfo { hasNextPage endCursor } nodes { amount } } }";
    let (mut seen, mut after) = (Vec::new(), Value::Null);
    loop {
        let r = module_gql(&node, deals, &owner, PAGES, json!({ "a": after })).await;
        let page = &r["data"]["deals"];
        seen.extend(
            page["nodes"]
                .as_array()
                .unwrap_or_else(|| panic!("{r}"))
                .iter()
                .map(|n| n["amount"].as_str().unwrap().parse::<f64>().unwrap()),
        );
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen.len(), 100);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "pages in descending amount without gaps or repeats");
    // Bad filters and pages are typed errors.
    for (vars, what) in [
        (json!({ "f": { "amount": { "gte": "lots" } } }), "a decimal that is not one"),
        (json!({ "f": { "shoe_size": { "eq": 1 } } }), "an unknown field"),
        (json!({ "a": "not-a-cursor" }), "a cursor of nothing"),
    ] {
        let r = module_gql(&node, deals, &owner, PAGE, vars).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{what}: {r}");
    }
    let r = module_gql(&node, deals, &owner, "{ deals(first: 1000) { totalCount } }", json!({})).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");

    // Update and delete, read back at once.
    const UPDATE: &str = "mutation($id: ID!, $i: ContactPatch!) { updateContact(id: $id, input: $i) { name status } }";
    let r = module_gql(&node, contacts, &owner, UPDATE, json!({ "id": ada, "i": { "status": "former" } })).await;
    assert_eq!(r["data"]["updateContact"], json!({ "name": "Ada", "status": "former" }), "{r}");
    let r =
        module_gql(&node, contacts, &owner, "mutation($id: ID!) { deleteCompany(id: $id) }", json!({ "id": company }))
            .await;
    assert_eq!(r["data"]["deleteCompany"], company.as_str(), "{r}");
    let r = module_gql(
        &node,
        contacts,
        &owner,
        "query($id: ID!) { contact(id: $id) { company_id company { name } } }",
        json!({ "id": ada }),
    )
    .await;
    assert_eq!(r["data"]["contact"]["company"], Value::Null, "a deleted reference reads as none: {r}");
}

/// A copy of the shipped `contacts` module in a directory of its own, with
/// `edit` applied to each file's text (path relative to the copy).
fn contacts_copy(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    let files = canopy_node::modules::read_dir(&repo_file("schemas/modules")).unwrap();
    for (rel, bytes) in files.into_iter().filter(|(rel, _)| rel.starts_with("contacts/")) {
        let target = dir.path().join(&rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, edit(&rel, String::from_utf8(bytes).unwrap())).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_failing_upgrade_names_its_step_and_a_changed_migration_is_refused() {
    let nats = NatsServer::start();
    // In this copy, v2 requires a last name: a one-word name cannot be split into one.
    let strict = contacts_copy(|rel, text| {
        match rel {
            "contacts/v2/module.toml" => text.replace(
                "[tables.contact.fields.last_name]\ntype = \"string\"\n",
                "[tables.contact.fields.last_name]\ntype = \"string\"\nrequired = true\n",
            ),
            // Its seeds would not fit either (the registry checks them).
            "contacts/v2/seeds/temp.json" | "contacts/v2/seeds/main.json" => "[]".to_owned(),
            _ => text,
        }
    });
    assert!(
        std::fs::read_to_string(strict.path().join("contacts/v2/module.toml"))
            .unwrap()
            .contains("required = true\nmax_length = 100")
    );
    let dir = strict.path().to_path_buf();
    let node = TestNode::start_configured(&nats, |c| c.modules_dir = Some(dir.clone())).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    assert!(subscribe(&node, &owner, "contacts", "v1", false).await["errors"].is_null());
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/contact", Some(&owner), Some(json!({ "name": "Linus" }))).await;
    assert_eq!(status, 201, "{r}");
    let linus = r["data"]["id"].as_str().unwrap().to_owned();

    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&owner), UPGRADE, json!({ "n": "contacts", "to": "v2" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("split name into first_name, last_name"), "{message}");
    assert!(message.contains(&linus) && message.contains("last_name"), "{message}");
    assert_eq!(last_seq(&nats).await, before, "a failed upgrade appends nothing");
    let held = node.gql(Some("acme"), Some(&owner), HELD, json!({})).await;
    assert_eq!(held["data"]["tenantModules"][0]["version"], "v1", "{held}");
    let (status, _) = rest(&node, "GET", &format!("/t/acme/contacts/v1/contact/{linus}"), Some(&owner), None).await;
    assert_eq!(status, 200, "the tenant works on v1 as before");

    // The operator edits an applied migration: the next node refuses to run
    // the tenant's migrations until the file is back, and says which.
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    drop(node);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let init = dir.join("contacts/v1/migrations/0001_init.surql");
    let original = std::fs::read_to_string(&init).unwrap();
    std::fs::write(&init, format!("{original}\n-- edited after it was applied\n")).unwrap();
    let node = TestNode::start_configured(&nats, |c| {
        c.modules_dir = Some(dir.clone());
        c.master_key = Some(master.trim().to_owned().into());
    })
    .await;
    let owner = token_of(&node.login("acme", "owner@acme.test", "owner-password").await, "login");
    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&owner), MIGRATE, json!({ "m": "contacts", "dry": true, "f": false })).await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("0001_init.surql"), "{r}");
    let (status, r) = rest(&node, "POST", "/t/acme/migrate", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (409, "CONFLICT"), "{r}");
    assert_eq!(last_seq(&nats).await, before, "nothing was applied");
    // Records still work meanwhile.
    let (status, _) = rest(&node, "GET", &format!("/t/acme/contacts/v1/contact/{linus}"), Some(&owner), None).await;
    assert_eq!(status, 200);

    // The file back as it was, and a new migration released beside it: the
    // next node runs it by itself at start (`auto_migrate`).
    drop(node);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    std::fs::write(&init, &original).unwrap();
    let index = "DEFINE INDEX IF NOT EXISTS contact_phone ON mod_contacts_contact FIELDS phone;\n";
    std::fs::write(dir.join("contacts/v1/migrations/0002_phone_index.surql"), index).unwrap();
    let node = TestNode::start_configured(&nats, |c| {
        c.modules_dir = Some(dir.clone());
        c.master_key = Some(master.trim().to_owned().into());
    })
    .await;
    let owner = token_of(&node.login("acme", "owner@acme.test", "owner-password").await, "login");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let held = node.gql(Some("acme"), Some(&owner), HELD, json!({})).await;
        let names: Vec<&str> = held["data"]["tenantModules"][0]["migrations"]
            .as_array()
            .unwrap_or_else(|| panic!("{held}"))
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        if names == ["0001_init.surql", "0002_phone_index.surql"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the pending migration did not run at start: {held}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A platform administrator's `POST /migrate` finds nothing left to do.
    let admin = node.admin_token().await;
    let (status, r) = rest(&node, "POST", "/migrate", Some(&owner), None).await;
    assert_eq!((status, rest_code(&r)), (403, "FORBIDDEN"), "{r}");
    let (status, r) = rest(&node, "POST", "/migrate", Some(&admin), None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"], json!([{ "tenant": "acme", "steps": [] }]), "{r}");
}

#[tokio::test]
async fn a_module_actor_stops_with_its_tree_and_starts_again_from_the_log() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.idle_timeout_secs = 1).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    assert!(subscribe(&node, &owner, "contacts", "v1", false).await["errors"].is_null());
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/company", Some(&owner), Some(json!({ "name": "Before" }))).await;
    assert_eq!(status, 201, "{r}");
    let id = r["data"]["id"].as_str().unwrap().to_owned();
    // The tree passivates; its module actor goes with it.
    passivated(&node).await;
    // The next command starts the tree and the module actor again from the
    // log: the subscription, the record and its unique name are all there.
    let (status, r) = rest(
        &node,
        "PATCH",
        &format!("/t/acme/contacts/v1/company/{id}"),
        Some(&owner),
        Some(json!({ "industry": "Software" })),
    )
    .await;
    assert_eq!((status, r["data"]["name"].as_str()), (200, Some("Before")), "{r}");
    let (status, r) =
        rest(&node, "POST", "/t/acme/contacts/v1/company", Some(&owner), Some(json!({ "name": "Before" }))).await;
    assert_eq!((status, rest_code(&r)), (400, "BAD_USER_INPUT"), "{r}");
}

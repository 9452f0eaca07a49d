//! The actor tree against a real nats-server: supervision, passivation, concurrency.

use std::time::Duration;

use actors::command::{
    AccountReply, AccountRequest, CommandEnvelope, CommandResult, Principal, TenantReply, TenantRequest,
};
use actors::domain::account::Account;
use actors::domain::account::{AccountId, Email, Password, PersonName};
use actors::domain::aggregate::Aggregate;
use actors::domain::ids::CommandId;
use actors::domain::tenant::{Scope, TenantId, TenantName};
use actors::hasher::{Hasher, owasp_params};
use actors::store::event_store::EventStore;
use actors::store::seal::{KeyRing, MasterKey};
use actors::tree::account::AccountHandler;
use actors::tree::deps::Deps;
use actors::tree::directory::DirectoryHandler;
use actors::tree::{NodeArgs, NodeMsg, NodeSupervisor, TenantMsg};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};

use crate::harness::NatsServer;

const T: Option<Duration> = Some(Duration::from_secs(20));

async fn node(nats: &NatsServer, idle: Duration) -> ActorRef<NodeMsg> {
    spawn(deps(nats, 100).await, idle).await
}

/// What a node's trees share; two nodes given clones of it share one log and keys.
async fn deps(nats: &NatsServer, snapshot_every: u64) -> Deps {
    deps_with(nats, snapshot_every, MasterKey::generate()).await
}

/// Deps whose keys a node with the same `master` key can open.
pub(crate) async fn deps_with(nats: &NatsServer, snapshot_every: u64, master: MasterKey) -> Deps {
    let client = nats.client().await;
    let (store, keys) = EventStore::open(client, 1).await.unwrap();
    Deps {
        store,
        keys: KeyRing::new(keys, master),
        hasher: Hasher::new(2, owasp_params()),
        snapshot_every,
        cache_per_tenant: 100,
        accounts: Default::default(),
        modules: std::sync::Arc::new(actors::domain::manifest::Registry::empty()),
    }
}

pub(crate) async fn spawn(deps: Deps, idle: Duration) -> ActorRef<NodeMsg> {
    Actor::spawn(None, NodeSupervisor, NodeArgs { deps, idle_timeout: idle, children: actors::tree::CHILDREN })
        .await
        .unwrap()
        .0
}

async fn tree(node: &ActorRef<NodeMsg>, scope: Scope) -> ActorRef<TenantMsg> {
    match node.call(|p| NodeMsg::Tree(scope, p), T).await.unwrap() {
        CallResult::Success(t) => t.unwrap(),
        _ => panic!("no tree"),
    }
}

pub(crate) async fn create_tenant(node: &ActorRef<NodeMsg>, slug: &str) -> String {
    let cmd = || CommandEnvelope {
        command_id: CommandId::parse(&format!("create-{slug}")).unwrap(),
        principal: admin(),
        request: TenantRequest::Create {
            slug: TenantId::parse(slug).unwrap(),
            name: TenantName::parse("Acme").unwrap(),
            owner_email: Email::parse(&format!("owner@{slug}.test")).unwrap(),
            owner_password: Password::parse("owner-password").unwrap(),
        },
        client: None,
    };
    // A tree idle for the node's (short) idle timeout stops; one that stopped
    // between the lookup and the call is looked up again.
    for _ in 0..3 {
        let platform = tree(node, Scope::Platform).await;
        match actors::tree::call::<DirectoryHandler>(&platform, cmd(), T.unwrap()).await {
            Ok(CallResult::Success(Ok(TenantReply::Created { owner_account_id, .. }))) => return owner_account_id,
            Ok(CallResult::SenderError) | Err(ractor::MessagingErr::SendErr(_)) => continue,
            other => panic!("tenant not created: {other:?}"),
        }
    }
    panic!("the platform tree kept stopping")
}

/// A platform administrator, as the edge would name one.
fn admin() -> Principal {
    Principal::Account { scope: Scope::Platform, account_id: AccountId::derived("test-admin"), session_id: None }
}

/// A profile update of an account of acme, sent by that account.
fn update(account_id: &str, command_id: &str, first: &str) -> CommandEnvelope<AccountRequest> {
    let account_id = AccountId::parse(account_id).unwrap();
    CommandEnvelope {
        command_id: CommandId::parse(command_id).unwrap(),
        principal: Principal::Account {
            scope: Scope::Tenant(TenantId::parse("acme").unwrap()),
            account_id: account_id.clone(),
            session_id: None,
        },
        request: AccountRequest::UpdateProfile {
            account_id,
            firstname: PersonName::parse(first).unwrap(),
            lastname: PersonName::parse("Owner").unwrap(),
            locale: None,
        },
        client: None,
    }
}

async fn send(
    tree: &ActorRef<TenantMsg>,
    cmd: CommandEnvelope<AccountRequest>,
) -> CallResult<CommandResult<AccountReply>> {
    actors::tree::call::<AccountHandler>(tree, cmd, T.unwrap()).await.unwrap()
}

#[tokio::test]
async fn a_crashed_account_actor_restarts_and_rebuilds_from_the_log() {
    let nats = NatsServer::start();
    let node = node(&nats, Duration::from_secs(60)).await;
    let owner = create_tenant(&node, "acme").await;
    let acme = tree(&node, Scope::Tenant(TenantId::parse("acme").unwrap())).await;
    assert!(matches!(send(&acme, update(&owner, "u1", "Before")).await, CallResult::Success(Ok(_))));

    acme.cast(TenantMsg::Panic(Account::NAME)).unwrap();
    // The command in flight when the actor panics gets an error at once, not a hang.
    let in_flight = tokio::time::timeout(Duration::from_secs(5), send(&acme, update(&owner, "u2", "Lost"))).await;
    assert!(
        matches!(in_flight, Ok(CallResult::SenderError)),
        "the in-flight command must fail fast, got {:?}",
        in_flight.map(|r| matches!(r, CallResult::Success(_)))
    );

    // The restarted actor has no memory; updating a profile needs the account
    // registered, which it can only know by rebuilding from the log.
    let mut after = None;
    for _ in 0..50 {
        match send(&acme, update(&owner, "u3", "After")).await {
            CallResult::Success(r) => {
                after = Some(r);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(matches!(after, Some(Ok(AccountReply::Updated { .. }))), "{after:?}");
}

#[tokio::test]
async fn an_idle_tenant_tree_stops_and_starts_again_on_the_next_command() {
    let nats = NatsServer::start();
    let node = node(&nats, Duration::from_millis(300)).await;
    let owner = create_tenant(&node, "acme").await;
    let acme = tree(&node, Scope::Tenant(TenantId::parse("acme").unwrap())).await;
    assert!(matches!(send(&acme, update(&owner, "u1", "One")).await, CallResult::Success(Ok(_))));
    let live = |node: ActorRef<NodeMsg>| async move {
        match node.call(NodeMsg::LiveTrees, T).await.unwrap() {
            CallResult::Success(n) => n,
            _ => panic!("no answer"),
        }
    };
    assert!(live(node.clone()).await >= 1);
    let mut passivated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if live(node.clone()).await == 0 {
            passivated = true;
            break;
        }
    }
    assert!(passivated, "idle trees must stop");
    let acme = tree(&node, Scope::Tenant(TenantId::parse("acme").unwrap())).await;
    assert!(matches!(send(&acme, update(&owner, "u2", "Two")).await, CallResult::Success(Ok(_))));
}

#[tokio::test]
async fn commands_for_an_unknown_tenant_are_refused() {
    let nats = NatsServer::start();
    let node = node(&nats, Duration::from_secs(60)).await;
    let scope = Scope::Tenant(TenantId::parse("nobody").unwrap());
    match node.call(|p| NodeMsg::Tree(scope, p), T).await.unwrap() {
        CallResult::Success(Err(f)) => assert_eq!(f.code, "NOT_FOUND"),
        _ => panic!("an unknown tenant must not get a tree"),
    }
}

#[tokio::test]
async fn commands_on_one_account_apply_in_order_and_on_many_accounts_concurrently() {
    let nats = NatsServer::start();
    let node = node(&nats, Duration::from_secs(60)).await;
    let owner = create_tenant(&node, "acme").await;
    let acme = tree(&node, Scope::Tenant(TenantId::parse("acme").unwrap())).await;
    // Twenty updates of one account sent at once: each one must be applied, none
    // may be lost to a conflict, and the last one sent wins.
    let mut calls = Vec::new();
    for i in 0..20 {
        let acme = acme.clone();
        let cmd = update(&owner, &format!("seq-{i}"), &format!("Name{i}"));
        calls.push(async move { send(&acme, cmd).await });
    }
    let results = futures::future::join_all(calls).await;
    let mut seqs = Vec::new();
    for r in results {
        match r {
            CallResult::Success(Ok(AccountReply::Updated { seq })) => seqs.push(seq),
            _ => panic!("an update failed"),
        }
    }
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "each update got its own event");
    assert_eq!(seqs, sorted, "updates of one account are applied in the order they arrived");
}

#[tokio::test]
async fn a_restarted_node_loads_an_account_from_its_snapshot_and_the_newer_events() {
    let nats = NatsServer::start();
    let deps = deps(&nats, 3).await;
    let store = deps.store.clone();
    let node = spawn(deps.clone(), Duration::from_secs(60)).await;
    let owner = create_tenant(&node, "acme").await;
    let acme_scope = Scope::Tenant(TenantId::parse("acme").unwrap());
    let acme = tree(&node, acme_scope.clone()).await;
    // A registration (its account event and its verification) and three updates:
    // a snapshot after the third event, two after it.
    for i in 0..3 {
        assert!(matches!(
            send(&acme, update(&owner, &format!("s{i}"), &format!("N{i}"))).await,
            CallResult::Success(Ok(_))
        ));
    }
    node.stop_and_wait(None, None).await.unwrap();

    let key = actors::tree::executor::snapshot_key::<actors::domain::account::Account>(&acme_scope, &owner);
    let (snap_seq, snap) = store
        .load_snapshot::<actors::domain::account::AccountState>(&key)
        .await
        .unwrap()
        .expect("a snapshot after 3 events");
    let full =
        actors::tree::executor::load::<actors::domain::account::Account>(&store, &acme_scope, &owner).await.unwrap();
    assert!(snap_seq < full.version, "newer events follow the snapshot");
    assert!(snap.is_registered());
    // Replaying only the log from the start gives the same state as snapshot + tail.
    let replayed = actors::tree::executor::replay_all::<actors::domain::account::Account>(&store, &acme_scope, &owner)
        .await
        .unwrap();
    assert_eq!(replayed.version, full.version);
    assert_eq!(replayed.state, full.state);

    let node = spawn(deps, Duration::from_secs(60)).await;
    let acme = tree(&node, acme_scope).await;
    assert!(matches!(send(&acme, update(&owner, "after", "After")).await, CallResult::Success(Ok(_))));
}

fn login(slug: &str) -> CommandEnvelope<AccountRequest> {
    login_as(&format!("owner@{slug}.test"))
}

fn login_as(email: &str) -> CommandEnvelope<AccountRequest> {
    CommandEnvelope {
        command_id: CommandId::fresh(),
        principal: Principal::Anonymous,
        request: AccountRequest::Login {
            email: Email::parse(email).unwrap(),
            password: Password::parse("owner-password").unwrap(),
            session: Default::default(),
        },
        client: None,
    }
}

/// The next consumer-created advisory for `EVENTS`, if one comes within `wait`.
async fn consumer_created(sub: &mut async_nats::Subscriber, wait: Duration) -> Option<String> {
    use futures::StreamExt;
    tokio::time::timeout(wait, sub.next()).await.ok().flatten().map(|m| m.subject.to_string())
}

#[tokio::test]
async fn a_login_uses_the_actors_current_account_and_reads_the_log_only_for_newer_events() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let deps = deps(&nats, 100).await;
    let node = spawn(deps.clone(), Duration::from_secs(60)).await;
    let owner = create_tenant(&node, "acme").await;
    let scope = Scope::Tenant(TenantId::parse("acme").unwrap());
    let acme = tree(&node, scope.clone()).await;
    // The update leaves the account in the actor's cache.
    assert!(matches!(send(&acme, update(&owner, "u1", "First")).await, CallResult::Success(Ok(_))));

    // A load reads the account's events through a consumer on EVENTS; nats-server
    // announces each one it creates.
    let mut created = client.subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.EVENTS.>").await.unwrap();
    client.flush().await.unwrap();
    for _ in 0..3 {
        match send(&acme, login("acme")).await {
            CallResult::Success(Ok(AccountReply::LoggedIn { account_id, owner: true, .. })) => {
                assert_eq!(account_id, owner)
            }
            other => panic!("login failed: {other:?}"),
        }
    }
    let seen = consumer_created(&mut created, Duration::from_millis(500)).await;
    assert_eq!(seen, None, "a login read events the actor already held");

    // Another writer (a second node's tree) appends to the account: the cached
    // state is behind the log now, and the next login must read the newer event.
    let other = spawn(deps, Duration::from_secs(60)).await;
    let other_acme = tree(&other, scope).await;
    assert!(matches!(send(&other_acme, update(&owner, "u2", "Second")).await, CallResult::Success(Ok(_))));
    while consumer_created(&mut created, Duration::from_millis(200)).await.is_some() {}
    assert!(matches!(send(&acme, login("acme")).await, CallResult::Success(Ok(AccountReply::LoggedIn { .. }))));
    assert!(
        consumer_created(&mut created, Duration::from_secs(2)).await.is_some(),
        "a login trusted a cached account that the log had moved past"
    );
    // The state the login read is kept: the next one reads nothing again, and
    // commands on this node go on from it.
    assert!(matches!(send(&acme, login("acme")).await, CallResult::Success(Ok(AccountReply::LoggedIn { .. }))));
    assert_eq!(consumer_created(&mut created, Duration::from_millis(500)).await, None);
    assert!(matches!(send(&acme, update(&owner, "u3", "Third")).await, CallResult::Success(Ok(_))));
}

/// One login's reads of the log and how long it took.
async fn timed_login(acme: &ActorRef<TenantMsg>, store: &EventStore, email: &str) -> (u64, Duration, bool) {
    let before = store.reads();
    let started = std::time::Instant::now();
    let result = send(acme, login_as(email)).await;
    let took = started.elapsed();
    let ok = matches!(result, CallResult::Success(Ok(AccountReply::LoggedIn { .. })));
    (store.reads() - before, took, ok)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

#[tokio::test]
async fn a_login_reads_the_same_for_a_known_and_an_unknown_email() {
    let nats = NatsServer::start();
    let deps = deps(&nats, 100).await;
    let node = spawn(deps.clone(), Duration::from_secs(600)).await;
    create_tenant(&node, "acme").await;
    let acme = tree(&node, Scope::Tenant(TenantId::parse("acme").unwrap())).await;
    let (known, unknown) = ("owner@acme.test", "nobody@acme.test");

    // The first login of each reads the account (or its decoy) from the log...
    let (k, _, ok) = timed_login(&acme, &deps.store, known).await;
    assert!(ok, "the owner could not log in");
    let (u, _, ok) = timed_login(&acme, &deps.store, unknown).await;
    assert!(!ok);
    assert_eq!(k, u, "a first login of a known email read {k} times, of an unknown one {u}");
    // ...and every later one checks the cached state: the same reads again.
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let (k, t, _) = timed_login(&acme, &deps.store, known).await;
        known_times.push(t);
        let (u, t, _) = timed_login(&acme, &deps.store, unknown).await;
        unknown_times.push(t);
        assert_eq!(k, u, "a known email's login read {k} times, an unknown one's {u}");
    }
    let (mk, mu) = (median(known_times), median(unknown_times));
    let ratio = mk.as_secs_f64() / mu.as_secs_f64();
    // Timing is printed, not asserted: two shared cores make it noisy.
    println!("login medians over 200 tries: known {mk:?}, unknown {mu:?} (known/unknown {ratio:.3})");
}

/// A test-only aggregate kind on the generic aggregate actor: a request is a
/// word, the lane is its first letter, and "panic" makes the task panic. It
/// proves what every aggregate gets from the runtime alone.
mod echo {
    use std::sync::Mutex;
    use std::time::Duration;

    use actors::command::{CommandEnvelope, CommandResult};
    use actors::domain::aggregate::{Aggregate, Decision, DomainError};
    use actors::domain::tenant::Scope;
    use actors::tree::aggregate_actor::{Ctx, Handler, Route};
    use actors::tree::executor::Loaded;

    /// The order in which commands ran, as `lane:word`.
    pub static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// A test-only aggregate: its state is how many words its lane has seen.
    pub struct Echoes;

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum EchoEvent {
        Echoed,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    impl DomainError for Never {
        fn code(&self) -> &'static str {
            "NEVER"
        }
    }

    impl Aggregate for Echoes {
        const NAME: &'static str = "echo";
        type State = u64;
        type Command = ();
        type Event = EchoEvent;
        type Error = Never;

        fn decide(_: &u64, _: &()) -> Result<Decision<EchoEvent>, Never> {
            Ok(Decision::events(vec![EchoEvent::Echoed]))
        }

        fn evolve(state: u64, _: &EchoEvent) -> u64 {
            state + 1
        }
    }

    pub struct Echo;

    impl Handler for Echo {
        type Aggregate = Echoes;
        type Request = String;
        type Reply = String;
        const NAME: &'static str = "EchoActor";

        fn route(_: &Scope, envelope: &CommandEnvelope<String>) -> CommandResult<Route> {
            Ok(Route::Lane(envelope.request.chars().next().unwrap_or('_').to_string()))
        }

        async fn run(
            _: &Ctx,
            id: &str,
            envelope: CommandEnvelope<String>,
            state: &mut Option<Loaded<Echoes>>,
        ) -> CommandResult<String> {
            // Slower words first: a lane must still keep its order.
            tokio::time::sleep(Duration::from_millis(if envelope.request.ends_with("slow") { 300 } else { 10 })).await;
            assert!(envelope.request != "panic", "the echo task panics on purpose");
            let seen = state.as_ref().map_or(0, |s| s.version);
            *state = Some(Loaded { version: seen + 1, ..Loaded::default() });
            RAN.lock().unwrap().push(format!("{id}:{}", envelope.request));
            Ok(format!("{}#{}", envelope.request, seen + 1))
        }
    }
}

#[tokio::test]
async fn the_generic_aggregate_actor_keeps_lanes_in_order_and_answers_for_a_panicked_task() {
    use actors::tree::aggregate_actor::{AggregateActor, AggregateArgs, AggregateMsg};
    let nats = NatsServer::start();
    let scope = Scope::Tenant(TenantId::parse("acme").unwrap());
    let args = AggregateArgs { scope, deps: deps(&nats, 100).await, link: Default::default() };
    let (actor, _) = Actor::spawn(None, AggregateActor::<echo::Echo>::default(), args).await.unwrap();
    async fn ask(actor: &ActorRef<AggregateMsg<echo::Echo>>, word: &str) -> CommandResult<String> {
        let envelope = CommandEnvelope {
            command_id: CommandId::fresh(),
            principal: Principal::Anonymous,
            request: word.to_owned(),
            client: None,
        };
        match actor.call(|p| AggregateMsg::Execute(envelope, p), T).await.unwrap() {
            CallResult::Success(result) => result,
            other => panic!("no reply: {other:?}"),
        }
    }
    // Two commands on lane "a" (the first slow) and one on lane "b", at once.
    let (first, second, other) = tokio::join!(ask(&actor, "a-slow"), ask(&actor, "a-quick"), ask(&actor, "b-quick"));
    assert_eq!(first.unwrap(), "a-slow#1");
    assert_eq!(second.unwrap(), "a-quick#2", "the lane's state passes from one command to the next");
    assert_eq!(other.unwrap(), "b-quick#1");
    let ran = echo::RAN.lock().unwrap().clone();
    let pos = |s: &str| ran.iter().position(|r| r == s).unwrap();
    assert!(pos("a:a-slow") < pos("a:a-quick"), "lane a ran out of order: {ran:?}");
    assert!(pos("b:b-quick") < pos("a:a-slow"), "lane b waited for lane a: {ran:?}");

    // A task that panics gets a typed reply; its lane goes on, from a reloaded state.
    let failed = ask(&actor, "panic").await.unwrap_err();
    assert_eq!(failed.code, "INTERNAL");
    assert_eq!(ask(&actor, "p-after").await.unwrap(), "p-after#1");
    assert_eq!(ask(&actor, "a-again").await.unwrap(), "a-again#3", "other lanes keep their cached state");
}

/// The node's child list plus the test-only echo aggregate, for a node that
/// runs it: adding an aggregate to the tree and to the router is this line.
static CHILDREN_WITH_ECHO: &[actors::tree::ChildSpec] = &[
    actors::tree::ChildSpec::of::<AccountHandler>(true, true),
    actors::tree::ChildSpec::of::<DirectoryHandler>(true, false),
    actors::tree::ChildSpec::of::<echo::Echo>(false, true),
];

#[tokio::test]
async fn a_new_aggregate_needs_only_its_handler_and_a_child_list_line_to_be_reached_over_nats() {
    let nats = NatsServer::start();
    let deps = deps(&nats, 100).await;
    let args = NodeArgs { deps, idle_timeout: Duration::from_secs(60), children: CHILDREN_WITH_ECHO };
    let (node, _) = Actor::spawn(None, NodeSupervisor, args).await.unwrap();
    create_tenant(&node, "acme").await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let args = canopy_node::cluster::JoinArgs {
        http: "127.0.0.1:1".parse().unwrap(),
        dead_after: Duration::from_secs(10),
        lease: Duration::from_secs(10),
        replicas: 1,
    };
    let member = canopy_node::cluster::Node::join(&client, &js, args).await.unwrap();
    let router = canopy_node::router::Router::new(canopy_node::router::RouterArgs {
        nats: client.clone(),
        node: node.clone(),
        timeout: Duration::from_secs(20),
        children: CHILDREN_WITH_ECHO,
        placement: member.placement.clone(),
        max_live_trees: 100,
        idle: Duration::from_secs(60),
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(member.serve(node, cancel.clone()));
    let running = tokio::spawn(router.run(cancel.clone()));
    client.flush().await.unwrap();

    // `cmd.{tenant}.echo` reaches the new child through the same router and
    // tree code every aggregate uses; nothing else was edited for it.
    let ask = |tenant: &'static str, word: &'static str| {
        let body = serde_json::json!({ "command_id": CommandId::fresh(), "principal": { "kind": "anonymous" }, "request": word });
        let client = client.clone();
        async move {
            let reply = client.request(format!("cmd.{tenant}.echo"), body.to_string().into()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    assert_eq!(ask("acme", "hello").await, serde_json::json!({ "Ok": "hello#1" }));
    assert_eq!(ask("acme", "hi").await, serde_json::json!({ "Ok": "hi#2" }), "its lane keeps its state");
    // It runs only where its line says: not in the platform's tree.
    assert_eq!(ask("_system", "hello").await["Err"]["code"], "NOT_FOUND");
    cancel.cancel();
    let _ = running.await;
}

//! The supervision tree: `NodeSupervisor → TenantSupervisor(scope) → AccountActor`
//! (and, in the platform's tree, the DirectoryActor). A tenant's tree starts on its
//! first command and stops after an idle time; a failed child is restarted and
//! rebuilds its state from the log when it next needs it. Every child is the
//! generic `AggregateActor` with its aggregate's `Handler`.

pub mod access;
pub mod account;
pub mod aggregate_actor;
pub mod backup;
pub mod deps;
pub mod directory;
pub mod executor;
pub mod modules;
pub mod push;
pub mod record;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::MessagingErr;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;

use futures::future::BoxFuture;
use ractor::ActorStatus;
use ractor::rpc::CallResult;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::command::{CommandEnvelope, CommandFailure, CommandResult, encode_result};
use crate::domain::aggregate::Aggregate;
use crate::domain::tenant::Scope;
use crate::domain::tenant_modules::{MODULES_ID, ModuleBinding, Modules, ModulesState};
use access::AccessHandler;
use account::AccountHandler;
use aggregate_actor::{AggregateActor, AggregateArgs, AggregateMsg, Handler, ModulesWatch, TreeLink};
use backup::BackupHandler;
use deps::{Deps, broken};
use directory::{DirectoryHandler, tenant_created_subject};
use modules::ModulesHandler;
use push::PushHandler;
use record::RecordHandler;
use webhook::WebhookHandler;

pub struct NodeSupervisor;

pub enum NodeMsg {
    /// The running tree for a scope, started if needed.
    Tree(Scope, RpcReplyPort<CommandResult<ActorRef<TenantMsg>>>),
    /// How many tenant trees are running.
    LiveTrees(RpcReplyPort<usize>),
    /// Hands the memory of stopped trees back to the OS.
    ReleaseMemory,
}

pub struct NodeArgs {
    pub deps: Deps,
    pub idle_timeout: Duration,
    /// The kinds of children its trees run: `CHILDREN` in a node.
    pub children: &'static [ChildSpec],
}

pub struct NodeState {
    deps: Deps,
    idle_timeout: Duration,
    children: &'static [ChildSpec],
    trees: HashMap<Scope, ActorRef<TenantMsg>>,
    scopes: HashMap<ActorId, Scope>,
    /// Tenants known to exist; a tenant is never deleted, so this only grows.
    known: HashSet<Scope>,
    /// The pending `ReleaseMemory`, if a tree stopped since the last one.
    release: Option<JoinHandle<Result<(), MessagingErr<NodeMsg>>>>,
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(&self, _myself: ActorRef<NodeMsg>, args: NodeArgs) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            deps: args.deps,
            idle_timeout: args.idle_timeout,
            children: args.children,
            trees: HashMap::new(),
            scopes: HashMap::new(),
            known: HashSet::from([Scope::Platform]),
            release: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Tree(scope, reply) => {
                let tree = state.tree(&myself, scope).await;
                let _ = reply.send(tree);
            }
            NodeMsg::LiveTrees(reply) => {
                let _ = reply.send(state.trees.len());
            }
            NodeMsg::ReleaseMemory => {
                state.release = None;
                // Awaited, so no task outlives the supervisor; a trim takes milliseconds
                // and commands reach running trees without passing through here.
                let _ = tokio::task::spawn_blocking(crate::memory::release_now).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => state.forget(&myself, &cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(error = %err, "a tenant tree failed; it restarts on its next command");
                state.forget(&myself, &cell, None);
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<NodeMsg>, state: &mut NodeState) -> Result<(), ActorProcessingErr> {
        if let Some(r) = state.release.take() {
            r.abort();
        }
        myself.stop_children_and_wait(Some("node stopping".into()), Some(Duration::from_secs(10))).await;
        Ok(())
    }
}

impl NodeState {
    async fn tree(&mut self, myself: &ActorRef<NodeMsg>, scope: Scope) -> CommandResult<ActorRef<TenantMsg>> {
        if let Some(t) = self.trees.get(&scope) {
            return Ok(t.clone());
        }
        if !self.known.contains(&scope) {
            let tenant = scope.tenant().expect("the platform is always known");
            let found = self
                .deps
                .store
                .last_on_subject(&tenant_created_subject(tenant))
                .await
                .map_err(|e| broken("checking that a tenant exists", e))?;
            if found.is_none() {
                return Err(CommandFailure::unknown_tenant());
            }
            self.known.insert(scope.clone());
        }
        let args = TenantArgs {
            scope: scope.clone(),
            deps: self.deps.clone(),
            idle_timeout: self.idle_timeout,
            children: self.children,
        };
        let (tree, _) = Actor::spawn_linked(None, TenantSupervisor, args, myself.get_cell())
            .await
            .map_err(|e| broken("starting a tenant tree", e))?;
        self.scopes.insert(tree.get_id(), scope.clone());
        self.trees.insert(scope, tree.clone());
        Ok(tree)
    }

    fn forget(&mut self, myself: &ActorRef<NodeMsg>, cell: &ActorCell, reason: Option<String>) {
        if let Some(scope) = self.scopes.remove(&cell.get_id()) {
            tracing::debug!(tenant = %scope, reason = reason.as_deref().unwrap_or(""), "tenant tree stopped");
            self.trees.remove(&scope);
        }
        // Passivation must give the tree's memory back to the OS, not only free it;
        // one release covers every tree that stops before it runs.
        if self.release.is_none() {
            self.release = Some(myself.send_after(crate::memory::DELAY, || NodeMsg::ReleaseMemory));
        }
    }
}

pub struct TenantSupervisor;

/// One kind of child of a tenant's tree: the aggregate actor of one handler,
/// and how a command for it travels from JSON to the actor and back.
pub struct ChildSpec {
    /// The aggregate's subject token: commands arrive on `cmd.{tenant}.{aggregate}`.
    pub aggregate: &'static str,
    /// Whether the platform's tree runs it.
    pub on_platform: bool,
    /// Whether tenants' trees run it.
    pub in_tenants: bool,
    /// Whether a tree runs one per module the tenant holds (a module actor),
    /// rather than one.
    pub per_module: bool,
    spawn: SpawnFn,
    execute_json: ExecuteFn,
    #[cfg(feature = "fault-injection")]
    panic: fn(&ActorCell),
}

/// Every kind of aggregate a node's trees run. An aggregate joins the tree,
/// and `cmd.{tenant}.{aggregate}` reaches it, with its line here (a node passes
/// this list in `Deps` to its trees and to its router).
pub const CHILDREN: &[ChildSpec] = &[
    ChildSpec::of::<AccountHandler>(true, true),
    ChildSpec::of::<AccessHandler>(false, true),
    ChildSpec::of::<DirectoryHandler>(true, false),
    ChildSpec::of::<ModulesHandler>(false, true),
    ChildSpec::of::<BackupHandler>(false, true),
    ChildSpec::of::<PushHandler>(false, true),
    ChildSpec::of::<WebhookHandler>(false, true),
    ChildSpec::per_module::<RecordHandler>(),
];

impl ChildSpec {
    pub const fn of<H>(on_platform: bool, in_tenants: bool) -> Self
    where
        H: Handler,
        H::Request: DeserializeOwned,
        H::Reply: Serialize,
    {
        Self {
            aggregate: <H::Aggregate as Aggregate>::NAME,
            on_platform,
            in_tenants,
            per_module: false,
            spawn: spawn_child::<H>,
            execute_json: execute_json::<H>,
            #[cfg(feature = "fault-injection")]
            panic: |cell| {
                let _ = cell.send_message(AggregateMsg::<H>::PanicOnNextCommand);
            },
        }
    }

    /// A child that tenants' trees run once per module they hold; a command
    /// reaches the one of the module its handler's `instance` names.
    pub const fn per_module<H>() -> Self
    where
        H: Handler,
        H::Request: DeserializeOwned,
        H::Reply: Serialize,
    {
        Self { per_module: true, ..Self::of::<H>(false, true) }
    }

    pub fn runs_in(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Platform => self.on_platform,
            Scope::Tenant(_) => self.in_tenants,
        }
    }

    /// The child of `children` that runs `aggregate` in trees of `scope`.
    pub fn find(children: &'static [ChildSpec], aggregate: &str, scope: &Scope) -> Option<&'static ChildSpec> {
        children.iter().find(|c| c.aggregate == aggregate && c.runs_in(scope))
    }

    /// Decodes a command (JSON) for this child, runs it on `tree` and encodes
    /// the reply; a command that does not decode is answered `BAD_USER_INPUT`.
    pub async fn execute_json(&self, tree: &ActorRef<TenantMsg>, payload: &[u8], timeout: Duration) -> Delivery {
        (self.execute_json)(tree, payload, timeout).await
    }
}

type SpawnErr = ractor::SpawnErr;
/// Starts a child under a tree.
type SpawnFn =
    for<'a> fn(&'a ActorRef<TenantMsg>, &'a Scope, &'a Deps, TreeLink) -> BoxFuture<'a, Result<ActorCell, SpawnErr>>;
/// Runs a JSON command on a tree's child.
type ExecuteFn = for<'a> fn(&'a ActorRef<TenantMsg>, &'a [u8], Duration) -> BoxFuture<'a, Delivery>;

fn spawn_child<'a, H: Handler>(
    tree: &'a ActorRef<TenantMsg>,
    scope: &'a Scope,
    deps: &'a Deps,
    link: TreeLink,
) -> BoxFuture<'a, Result<ActorCell, SpawnErr>> {
    Box::pin(async move {
        let args = AggregateArgs { scope: scope.clone(), deps: deps.clone(), link };
        let (child, _) = Actor::spawn_linked(None, AggregateActor::<H>::default(), args, tree.get_cell()).await?;
        Ok(child.get_cell())
    })
}

/// What became of a command handed to a tree.
#[derive(Debug)]
pub enum Delivery {
    /// The encoded `CommandResult`.
    Replied(Vec<u8>),
    /// The tree stopped (passivated) before its child took the command; a
    /// fresh tree may be asked, under the same command id.
    TreeStopped,
}

fn execute_json<'a, H>(tree: &'a ActorRef<TenantMsg>, payload: &'a [u8], timeout: Duration) -> BoxFuture<'a, Delivery>
where
    H: Handler,
    H::Request: DeserializeOwned,
    H::Reply: Serialize,
{
    Box::pin(async move {
        let envelope: CommandEnvelope<H::Request> = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                let refused = CommandFailure::new("BAD_USER_INPUT", format!("malformed command: {e}"));
                return Delivery::Replied(encode_result::<()>(Err(refused)));
            }
        };
        let result = match call::<H>(tree, envelope, timeout).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => {
                tracing::error!(aggregate = H::NAME, "command timed out in the tenant tree");
                Err(CommandFailure::internal())
            }
            // Our reply port was dropped. If the tree is passivating, it dropped the
            // command with it; if it runs, the actor handling the command failed
            // and the caller may retry with the same id.
            Ok(CallResult::SenderError) if tree.get_status() != ActorStatus::Running => return Delivery::TreeStopped,
            Ok(CallResult::SenderError) => {
                tracing::error!(aggregate = H::NAME, "the actor handling a command stopped");
                Err(CommandFailure::internal())
            }
            Err(_) => return Delivery::TreeStopped,
        };
        Delivery::Replied(encode_result(result))
    })
}

/// Hands `envelope` to the child of `tree` that runs `H`, and waits for its reply.
pub async fn call<H: Handler>(
    tree: &ActorRef<TenantMsg>,
    envelope: CommandEnvelope<H::Request>,
    timeout: Duration,
) -> Result<CallResult<CommandResult<H::Reply>>, MessagingErr<TenantMsg>> {
    let aggregate = <H::Aggregate as Aggregate>::NAME;
    let instance = H::instance(&envelope.request).map(str::to_owned);
    tree.call(
        move |port| {
            let send: Deliver = Box::new(move |child| match child {
                Ok(cell) => {
                    // If the child is gone, the port is dropped with the message and
                    // the caller hears at once rather than at its timeout.
                    let _ = cell.send_message(AggregateMsg::<H>::Execute(envelope, port));
                }
                Err(refused) => {
                    let _ = port.send(Err(refused));
                }
            });
            TenantMsg::Command { aggregate, instance, send }
        },
        Some(timeout),
    )
    .await
}

/// Delivers a typed command to the child that runs its aggregate, or answers
/// why the tree has none. The tree never needs the command's types.
pub type Deliver = Box<dyn FnOnce(Result<&ActorCell, CommandFailure>) + Send>;

pub enum TenantMsg {
    /// A command for the child running `aggregate` (see `call`).
    Command {
        aggregate: &'static str,
        /// For a child run per module: the module's name.
        instance: Option<String>,
        send: Deliver,
    },
    IdleCheck,
    /// Makes the child running `aggregate` panic on its next command (tests of supervision).
    #[cfg(feature = "fault-injection")]
    Panic(&'static str),
}

pub struct TenantArgs {
    pub scope: Scope,
    pub deps: Deps,
    pub idle_timeout: Duration,
    /// The kinds of children it runs (those of them that run in its scope).
    pub children: &'static [ChildSpec],
}

pub struct TenantState {
    scope: Scope,
    deps: Deps,
    /// The running children, one per `ChildSpec` this tree runs once.
    children: Vec<(&'static ChildSpec, ActorCell)>,
    /// Every child spec, for the module actors.
    specs: &'static [ChildSpec],
    /// The module actors, by module name, with what each serves.
    modules: HashMap<String, ModuleChild>,
    /// The tenant's subscriptions, published by the modules actor.
    subscriptions: ModulesWatch,
    last_active: Instant,
    idle_timeout: Duration,
    idle_timer: Option<JoinHandle<Result<(), MessagingErr<TenantMsg>>>>,
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        let subscriptions: ModulesWatch = Arc::new(tokio::sync::watch::channel(None).0);
        let link = TreeLink { modules: Some(subscriptions.clone()), ..Default::default() };
        let mut children = Vec::new();
        for spec in args.children.iter().filter(|c| c.runs_in(&args.scope) && !c.per_module) {
            children.push((spec, (spec.spawn)(&myself, &args.scope, &args.deps, link.clone()).await?));
        }
        let idle_timer = Some(myself.send_after(args.idle_timeout, || TenantMsg::IdleCheck));
        Ok(TenantState {
            scope: args.scope,
            deps: args.deps,
            children,
            specs: args.children,
            modules: HashMap::new(),
            subscriptions,
            last_active: Instant::now(),
            idle_timeout: args.idle_timeout,
            idle_timer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Command { aggregate, instance, send } => {
                state.last_active = Instant::now();
                match instance {
                    None => send(state.child(aggregate).ok_or_else(no_child)),
                    Some(module) => {
                        let child = state.module_child(&myself, &module).await;
                        send(child.as_ref().map_err(Clone::clone));
                    }
                }
            }
            TenantMsg::IdleCheck => state.idle_check(&myself),
            #[cfg(feature = "fault-injection")]
            TenantMsg::Panic(aggregate) => {
                if let Some((spec, cell)) = state.children.iter().find(|(s, _)| s.aggregate == aggregate) {
                    (spec.panic)(cell);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        evt: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_default()),
            _ => return Ok(()),
        };
        if let Some(at) = state.children.iter().position(|(_, c)| c.get_id() == cell.get_id()) {
            let spec = state.children[at].0;
            tracing::warn!(tenant = %state.scope, aggregate = spec.aggregate, reason = %why, "a child stopped; restarting it");
            let link = TreeLink { modules: Some(state.subscriptions.clone()), ..Default::default() };
            state.children[at].1 = (spec.spawn)(&myself, &state.scope, &state.deps, link).await?;
        }
        // A module actor that stopped is started again by the next command for
        // its module; one the tree replaced or dropped is already gone from the map.
        state.modules.retain(|_, m| m.cell.get_id() != cell.get_id());
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.idle_timer.take() {
            t.abort();
        }
        myself.stop_children_and_wait(Some("tenant tree stopping".into()), Some(Duration::from_secs(10))).await;
        Ok(())
    }
}

/// A running module actor and the subscription it serves.
struct ModuleChild {
    major: u32,
    generation: u64,
    cell: ActorCell,
}

fn no_child() -> CommandFailure {
    CommandFailure::new("NOT_FOUND", "no such aggregate here")
}

impl TenantState {
    fn child(&self, aggregate: &str) -> Option<&ActorCell> {
        self.children.iter().find(|(s, _)| s.aggregate == aggregate).map(|(_, c)| c)
    }

    /// The module actor of `module`, started (or replaced, after an upgrade or
    /// a new subscription) to match the tenant's subscriptions; stopped ones
    /// of modules no longer held go first.
    async fn module_child(&mut self, myself: &ActorRef<TenantMsg>, module: &str) -> CommandResult<ActorCell> {
        let subscriptions = self.current_subscriptions().await?;
        self.modules.retain(|name, child| {
            let keep = subscriptions
                .subscribed
                .get(name)
                .is_some_and(|s| s.major == child.major && s.generation == child.generation);
            if !keep {
                child.cell.stop(Some("subscription changed".into()));
            }
            keep
        });
        if let Some(child) = self.modules.get(module) {
            return Ok(child.cell.clone());
        }
        let held = subscriptions.subscribed.get(module).ok_or_else(|| {
            CommandFailure::new("NOT_FOUND", format!("this tenant does not hold the module {module}"))
        })?;
        let version = self.deps.modules.get(module, held.major).ok_or_else(|| {
            tracing::error!(tenant = %self.scope, module, major = held.major, "a held module version is not in this node's registry");
            CommandFailure::new("NOT_FOUND", format!("this node does not serve {module}@v{}", held.major))
        })?;
        let spec = self.specs.iter().find(|s| s.per_module).ok_or_else(no_child)?;
        let link = TreeLink {
            modules: Some(self.subscriptions.clone()),
            module: Some(ModuleBinding { version: version.clone(), generation: held.generation }),
            ..Default::default()
        };
        let cell = (spec.spawn)(myself, &self.scope, &self.deps, link)
            .await
            .map_err(|e| broken("starting a module actor", e))?;
        let child = ModuleChild { major: held.major, generation: held.generation, cell: cell.clone() };
        self.modules.insert(module.to_owned(), child);
        Ok(cell)
    }

    /// The subscriptions the modules actor published, or the log's when it has
    /// published none yet in this tree's life.
    async fn current_subscriptions(&self) -> CommandResult<Arc<ModulesState>> {
        if let Some(known) = self.subscriptions.borrow().clone() {
            return Ok(known);
        }
        let loaded = executor::load::<Modules>(&self.deps.store, &self.scope, MODULES_ID)
            .await
            .map_err(|e| broken("loading the tenant's modules", e))?;
        let state = Arc::new(loaded.state);
        // The modules actor may have published a newer state meanwhile; keep it.
        self.subscriptions.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(state.clone());
                true
            } else {
                false
            }
        });
        Ok(self.subscriptions.borrow().clone().unwrap_or(state))
    }

    fn idle_check(&mut self, myself: &ActorRef<TenantMsg>) {
        let idle = self.last_active.elapsed();
        if idle >= self.idle_timeout {
            // Passivate: everything the tree held is rebuilt from the log next time.
            myself.stop(Some("idle".into()));
        } else {
            let wait = self.idle_timeout - idle;
            self.idle_timer = Some(myself.send_after(wait, || TenantMsg::IdleCheck));
        }
    }
}

//! The supervision tree: `NodeSupervisor → TenantSupervisor(scope) → AccountActor`
//! (and, in the platform's tree, the DirectoryActor). A tenant's tree starts on its
//! first command and stops after an idle time; a failed child is restarted and
//! rebuilds its state from the log when it next needs it. Every child is the
//! generic `AggregateActor` with its aggregate's `Handler`.

pub mod account;
pub mod aggregate_actor;
pub mod deps;
pub mod directory;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ractor::MessagingErr;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;

use crate::command::{
    AccountReply, AccountRequest, CommandEnvelope, CommandFailure, CommandResult, TenantReply, TenantRequest,
};
use crate::tenant::Scope;
use account::{AccountActor, AccountMsg};
use aggregate_actor::{AggregateArgs, AggregateMsg};
use deps::{Deps, broken};
use directory::{DirectoryActor, DirectoryMsg, tenant_created_subject};

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
}

pub struct NodeState {
    deps: Deps,
    idle_timeout: Duration,
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
        let args = TenantArgs { scope: scope.clone(), deps: self.deps.clone(), idle_timeout: self.idle_timeout };
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

pub enum TenantMsg {
    Account(CommandEnvelope<AccountRequest>, RpcReplyPort<CommandResult<AccountReply>>),
    Directory(CommandEnvelope<TenantRequest>, RpcReplyPort<CommandResult<TenantReply>>),
    IdleCheck,
    /// Makes the AccountActor panic on its next command (tests of supervision).
    #[cfg(feature = "fault-injection")]
    PanicAccountActor,
}

pub struct TenantArgs {
    pub scope: Scope,
    pub deps: Deps,
    pub idle_timeout: Duration,
}

pub struct TenantState {
    scope: Scope,
    deps: Deps,
    account: ActorRef<AccountMsg>,
    directory: Option<ActorRef<DirectoryMsg>>,
    last_active: Instant,
    idle_timeout: Duration,
    idle_timer: Option<JoinHandle<Result<(), MessagingErr<TenantMsg>>>>,
}

async fn spawn_account(
    myself: &ActorRef<TenantMsg>,
    scope: &Scope,
    deps: &Deps,
) -> Result<ActorRef<AccountMsg>, ActorProcessingErr> {
    let args = AggregateArgs { scope: scope.clone(), deps: deps.clone() };
    let (account, _) = Actor::spawn_linked(None, AccountActor::default(), args, myself.get_cell()).await?;
    Ok(account)
}

async fn spawn_directory(
    myself: &ActorRef<TenantMsg>,
    deps: &Deps,
) -> Result<ActorRef<DirectoryMsg>, ActorProcessingErr> {
    let args = AggregateArgs { scope: Scope::Platform, deps: deps.clone() };
    let (directory, _) = Actor::spawn_linked(None, DirectoryActor::default(), args, myself.get_cell()).await?;
    Ok(directory)
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
        let account = spawn_account(&myself, &args.scope, &args.deps).await?;
        let directory = match args.scope {
            Scope::Platform => Some(spawn_directory(&myself, &args.deps).await?),
            Scope::Tenant(_) => None,
        };
        let idle_timer = Some(myself.send_after(args.idle_timeout, || TenantMsg::IdleCheck));
        Ok(TenantState {
            scope: args.scope,
            deps: args.deps,
            account,
            directory,
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
            TenantMsg::Account(cmd, reply) => {
                state.last_active = Instant::now();
                // If the child is gone, `reply` is dropped with the message and the
                // caller gets an error at once rather than waiting for a timeout.
                let _ = state.account.cast(AggregateMsg::Execute(cmd, reply));
            }
            TenantMsg::Directory(cmd, reply) => {
                state.last_active = Instant::now();
                match &state.directory {
                    Some(d) => {
                        let _ = d.cast(AggregateMsg::Execute(cmd, reply));
                    }
                    None => {
                        let _ =
                            reply.send(Err(CommandFailure::new("NOT_FOUND", "tenants are created on the platform")));
                    }
                }
            }
            TenantMsg::IdleCheck => state.idle_check(&myself),
            #[cfg(feature = "fault-injection")]
            TenantMsg::PanicAccountActor => {
                let _ = state.account.cast(AggregateMsg::PanicOnNextCommand);
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
        if cell.get_id() == state.account.get_id() {
            tracing::warn!(tenant = %state.scope, reason = %why, "AccountActor stopped; restarting it");
            state.account = spawn_account(&myself, &state.scope, &state.deps).await?;
        } else if state.directory.as_ref().is_some_and(|d| d.get_id() == cell.get_id()) {
            tracing::warn!(reason = %why, "DirectoryActor stopped; restarting it");
            state.directory = Some(spawn_directory(&myself, &state.deps).await?);
        }
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

impl TenantState {
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

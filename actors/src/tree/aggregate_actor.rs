//! The generic aggregate actor: one per aggregate kind in a tenant's tree. It
//! gives every aggregate the same runtime, and a `Handler` says only what is
//! particular to one kind:
//! - a lane per aggregate id: commands for one id run one after another, in
//!   order; commands for different ids run at the same time, each in a task
//!   the actor owns;
//! - a bounded cache of loaded states (least recently used go first), handed to
//!   the next command on the same id and to free commands that read it;
//! - free commands (`Route::Free`, such as a login, which changes nothing) run
//!   at once outside the lanes;
//! - a typed reply for every command: a task that panics answers `INTERNAL`,
//!   its lane goes on with the next command, and its state is reloaded.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use crate::command::{CommandEnvelope, CommandFailure, CommandResult};
use crate::domain::access::Access;
use crate::domain::aggregate::Aggregate;
use crate::domain::tenant::Scope;
use crate::domain::tenant_modules::{ModuleBinding, ModulesState};
use crate::tree::deps::Deps;
use crate::tree::executor::Loaded;

/// Where a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// After earlier commands for this aggregate id, with its cached state.
    Lane(String),
    /// At once, outside the lanes.
    Free,
}

/// What a command's handler gets: the tree's scope, shared parts and its link
/// to the tree.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub scope: Scope,
    pub deps: Deps,
    pub link: TreeLink,
}

/// What a child shares with its tenant's tree beyond `Deps`.
#[derive(Debug, Clone, Default)]
pub struct TreeLink {
    /// The tenant's module subscriptions as last decided: the modules actor
    /// publishes each state it appends, and the tree reads it to start, stop
    /// and replace module actors before it routes a record command.
    pub modules: Option<ModulesWatch>,
    /// The module version (and subscription) a module actor serves.
    pub module: Option<ModuleBinding>,
    /// The tenant's access control as this child last read it: a module
    /// actor checks each record command's permission against it, brought up
    /// to date with one point read.
    pub access: Arc<std::sync::Mutex<Option<Loaded<Access>>>>,
}

/// The tenant's module subscriptions (`None` until first loaded).
pub type ModulesWatch = Arc<tokio::sync::watch::Sender<Option<Arc<ModulesState>>>>;

/// What is particular to one kind of aggregate.
pub trait Handler: Sized + Send + Sync + 'static {
    /// The aggregate whose states the actor caches, one per lane.
    type Aggregate: Aggregate;
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// The actor's name in logs.
    const NAME: &'static str;

    /// Where a command runs, or why it is refused before it runs (a malformed
    /// id, a principal that may not send it).
    fn route(scope: &Scope, envelope: &CommandEnvelope<Self::Request>) -> CommandResult<Route>;

    /// For a child run once per module (a module actor): the module a request
    /// is for.
    fn instance(_request: &Self::Request) -> Option<&str> {
        None
    }

    /// Runs a command of lane `id`. `state` holds the lane's cached state (or
    /// `None`: load it); whatever it holds when the command ends is cached, so
    /// a handler can return early with `?` and the state it had stays correct.
    fn run(
        ctx: &Ctx,
        id: &str,
        envelope: CommandEnvelope<Self::Request>,
        state: &mut Option<Loaded<Self::Aggregate>>,
    ) -> impl Future<Output = CommandResult<Self::Reply>> + Send;

    /// Runs a free command; `cache` reads and feeds the actor's cache.
    fn run_free(
        ctx: &Ctx,
        envelope: CommandEnvelope<Self::Request>,
        cache: Cache<Self>,
    ) -> impl Future<Output = CommandResult<Self::Reply>> + Send {
        let _ = (ctx, envelope, cache);
        async { Err(CommandFailure::internal()) }
    }
}

pub struct AggregateActor<H>(PhantomData<H>);

impl<H> Default for AggregateActor<H> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub enum AggregateMsg<H: Handler> {
    Execute(CommandEnvelope<H::Request>, RpcReplyPort<CommandResult<H::Reply>>),
    /// A lane's task ended; `state` is the state to keep, if any.
    Finished {
        id: String,
        state: Option<Box<Loaded<H::Aggregate>>>,
    },
    /// The cached state of `id`, unless a command is running on it.
    Cached(String, RpcReplyPort<Option<Box<Loaded<H::Aggregate>>>>),
    /// A state a free command read, kept unless a newer one is known.
    Remember {
        id: String,
        state: Box<Loaded<H::Aggregate>>,
    },
    /// Makes the actor panic on its next command, to exercise supervision in tests.
    #[cfg(feature = "fault-injection")]
    PanicOnNextCommand,
}

pub struct AggregateArgs {
    pub scope: Scope,
    pub deps: Deps,
    pub link: TreeLink,
}

struct Job<H: Handler> {
    envelope: CommandEnvelope<H::Request>,
    reply: RpcReplyPort<CommandResult<H::Reply>>,
}

pub struct AggregateState<H: Handler> {
    ctx: Ctx,
    cache: quick_cache::unsync::Cache<String, Loaded<H::Aggregate>>,
    /// An entry means a task is running for that id; queued jobs wait in it.
    lanes: HashMap<String, VecDeque<Job<H>>>,
    tasks: JoinSet<()>,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

/// A free command's way to the actor's cache.
pub struct Cache<H: Handler> {
    actor: ActorRef<AggregateMsg<H>>,
}

/// How long a free command waits for its actor to hand over a cached state.
const ASK_CACHE: Duration = Duration::from_secs(5);

impl<H: Handler> Cache<H> {
    /// The cached state of `id`, if the actor has one and no command runs on it.
    pub async fn get(&self, id: &str) -> Option<Loaded<H::Aggregate>> {
        let id = id.to_owned();
        match self.actor.call(|port| AggregateMsg::Cached(id, port), Some(ASK_CACHE)).await {
            Ok(CallResult::Success(cached)) => cached.map(|b| *b),
            _ => None,
        }
    }

    /// Offers a state the command read to the cache.
    pub fn remember(&self, id: &str, state: Loaded<H::Aggregate>) {
        let _ = self.actor.cast(AggregateMsg::Remember { id: id.to_owned(), state: Box::new(state) });
    }
}

impl<H: Handler> Actor for AggregateActor<H> {
    type Msg = AggregateMsg<H>;
    type State = AggregateState<H>;
    type Arguments = AggregateArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AggregateMsg<H>>,
        args: AggregateArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let capacity = args.deps.cache_per_tenant.max(1);
        Ok(AggregateState {
            ctx: Ctx { scope: args.scope, deps: args.deps, link: args.link },
            cache: quick_cache::unsync::Cache::new(capacity),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AggregateMsg<H>>,
        msg: AggregateMsg<H>,
        state: &mut AggregateState<H>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregateMsg::Execute(envelope, reply) => {
                #[cfg(feature = "fault-injection")]
                if std::mem::take(&mut state.panic_next) {
                    panic!("fault injection: {} panics on purpose", H::NAME);
                }
                state.dispatch(myself, envelope, reply);
            }
            AggregateMsg::Finished { id, state: loaded } => state.finished(myself, id, loaded.map(|b| *b)),
            AggregateMsg::Cached(id, reply) => {
                let cached = if state.lanes.contains_key(&id) { None } else { state.cache.get(&id).cloned() };
                let _ = reply.send(cached.map(Box::new));
            }
            AggregateMsg::Remember { id, state: loaded } => state.remember(id, *loaded),
            #[cfg(feature = "fault-injection")]
            AggregateMsg::PanicOnNextCommand => state.panic_next = true,
        }
        Ok(())
    }
}

impl<H: Handler> AggregateState<H> {
    fn dispatch(
        &mut self,
        myself: ActorRef<AggregateMsg<H>>,
        envelope: CommandEnvelope<H::Request>,
        reply: RpcReplyPort<CommandResult<H::Reply>>,
    ) {
        self.reap();
        match H::route(&self.ctx.scope, &envelope) {
            Err(refused) => {
                let _ = reply.send(Err(refused));
            }
            Ok(Route::Free) => {
                let ctx = self.ctx.clone();
                let cache = Cache { actor: myself };
                self.tasks.spawn(async move {
                    let outcome = AssertUnwindSafe(H::run_free(&ctx, envelope, cache)).catch_unwind().await;
                    let _ = reply.send(outcome.unwrap_or_else(|_| Err(panicked::<H>())));
                });
            }
            Ok(Route::Lane(id)) => {
                let job = Job { envelope, reply };
                if let Some(queue) = self.lanes.get_mut(&id) {
                    queue.push_back(job);
                } else {
                    self.lanes.insert(id.clone(), VecDeque::new());
                    self.start(myself, id, job);
                }
            }
        }
    }

    fn start(&mut self, myself: ActorRef<AggregateMsg<H>>, id: String, job: Job<H>) {
        let mut loaded = self.cache.remove(&id).map(|(_, l)| l);
        let ctx = self.ctx.clone();
        self.tasks.spawn(async move {
            let outcome = AssertUnwindSafe(H::run(&ctx, &id, job.envelope, &mut loaded)).catch_unwind().await;
            let result = match outcome {
                Ok(result) => result,
                // What the task held may be half-changed: reload it next time.
                Err(_) => {
                    loaded = None;
                    Err(panicked::<H>())
                }
            };
            let _ = job.reply.send(result);
            // If the actor is gone, its replacement reloads from the log.
            let _ = myself.cast(AggregateMsg::Finished { id, state: loaded.map(Box::new) });
        });
    }

    fn finished(&mut self, myself: ActorRef<AggregateMsg<H>>, id: String, loaded: Option<Loaded<H::Aggregate>>) {
        if let Some(l) = loaded {
            self.cache.insert(id.clone(), l);
        }
        match self.lanes.get_mut(&id).and_then(VecDeque::pop_front) {
            Some(next) => self.start(myself, id, next),
            None => {
                self.lanes.remove(&id);
            }
        }
        self.reap();
    }

    fn remember(&mut self, id: String, loaded: Loaded<H::Aggregate>) {
        // A running command's result is newer, and is kept when it finishes; a
        // cached state may also have moved on since the free command read its own.
        if self.lanes.contains_key(&id) || self.cache.peek(&id).is_some_and(|c| c.version >= loaded.version) {
            return;
        }
        self.cache.insert(id, loaded);
    }

    /// Collects the tasks that ended (each has replied and, for a lane, said so).
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// The reply of a command whose task panicked.
fn panicked<H: Handler>() -> CommandFailure {
    tracing::error!(actor = H::NAME, "a command's task panicked");
    CommandFailure::internal()
}

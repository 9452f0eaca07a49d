//! The AccountActor: one per scope, holding the accounts that commands touched
//! recently. Commands for one account run one after another (a lane per account);
//! commands for different accounts run at the same time, each in a task the actor
//! owns. Accounts are loaded lazily from a snapshot and the log.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use crate::account::{
    Account, AccountCommand, AccountError, AccountId, EMAIL_CLAIM, EMAIL_RESERVED, Email, EmailReserved, Password,
    PersonName, Registration,
};
use crate::command::{AccountReply, AccountRequest, CommandEnvelope, CommandFailure, CommandResult};
use crate::event_store::{Stamp, Stored, event_subject};
use crate::executor::{ExecError, Loaded, execute, load, refresh};
use crate::ids::CommandId;
use crate::seal::{person_key_name, tenant_key_name};
use crate::tenant::Scope;
use crate::tree::Deps;

pub struct AccountActor;

pub enum AccountMsg {
    Execute(CommandEnvelope<AccountRequest>, RpcReplyPort<CommandResult<AccountReply>>),
    /// A task finished with an account; `loaded` is its fresh state, if known.
    Finished {
        id: String,
        loaded: Option<Box<Loaded<Account>>>,
    },
    /// The cached state of an account, if no command is running on it (for logins,
    /// which run outside the lanes).
    Cached(String, RpcReplyPort<Option<Box<Loaded<Account>>>>),
    /// A state a login read, to keep unless a newer one is known.
    Remember {
        id: String,
        loaded: Box<Loaded<Account>>,
    },
    /// Makes the actor panic on the next command, to exercise supervision in tests.
    #[cfg(feature = "fault-injection")]
    PanicOnNextCommand,
}

pub struct AccountArgs {
    pub scope: Scope,
    pub deps: Deps,
}

struct Job {
    command_id: CommandId,
    /// What the request's digest is computed over (`CommandEnvelope::digest_input`).
    digest_input: String,
    request: AccountRequest,
    reply: RpcReplyPort<CommandResult<AccountReply>>,
}

pub struct AccountActorState {
    scope: Scope,
    deps: Deps,
    cache: HashMap<String, Loaded<Account>>,
    /// An entry means a task is running for that account; queued jobs wait in it.
    lanes: HashMap<String, VecDeque<Job>>,
    tasks: JoinSet<()>,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

/// A registration's account id follows from its command id, so a retried
/// registration lands on the same aggregate and is recognised as a retry.
pub fn account_id_for(scope: &Scope, command_id: &CommandId) -> AccountId {
    AccountId::derived(&format!("{scope}/account/{command_id}"))
}

/// The account a login for an unknown email reads instead: an id no account
/// can have (registrations derive theirs from command ids), the same one for
/// the same email, so that the login takes exactly the path of a known one.
fn decoy_account(scope: &Scope, email_index: &str) -> AccountId {
    AccountId::derived(&format!("{scope}/no-account/{email_index}"))
}

/// The keyed digest of a request: HMAC-SHA256 under the scope's data key, so
/// log readers learn nothing from it (the request holds personal data).
pub async fn request_digest(deps: &Deps, scope: &Scope, digest_input: &str) -> Result<String, CommandFailure> {
    let key = deps.keys.key(&tenant_key_name(scope)).await.map_err(|e| broken("reading the tenant key", e))?;
    Ok(key.blind_index("request", digest_input))
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountActorState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(AccountActorState {
            scope: args.scope,
            deps: args.deps,
            cache: HashMap::new(),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        msg: AccountMsg,
        state: &mut AccountActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AccountMsg::Execute(envelope, reply) => {
                #[cfg(feature = "fault-injection")]
                if std::mem::take(&mut state.panic_next) {
                    panic!("fault injection: AccountActor panics on purpose");
                }
                state.dispatch(myself, envelope, reply);
            }
            AccountMsg::Finished { id, loaded } => state.finished(myself, id, loaded),
            AccountMsg::Cached(id, reply) => {
                let _ = reply.send(state.cache.get(&id).cloned().map(Box::new));
            }
            AccountMsg::Remember { id, loaded } => state.remember(id, *loaded),
            #[cfg(feature = "fault-injection")]
            AccountMsg::PanicOnNextCommand => state.panic_next = true,
        }
        Ok(())
    }
}

impl AccountActorState {
    fn dispatch(
        &mut self,
        myself: ActorRef<AccountMsg>,
        envelope: CommandEnvelope<AccountRequest>,
        reply: RpcReplyPort<CommandResult<AccountReply>>,
    ) {
        let digest_input = envelope.digest_input();
        let CommandEnvelope { command_id, principal, request } = envelope;
        let lane = match &request {
            AccountRequest::Register { .. } => account_id_for(&self.scope, &command_id),
            AccountRequest::UpdateProfile { account_id, .. } => {
                // Only the account itself changes its profile; checked here, where
                // the decision is made, whoever sent the command.
                if principal.account_in(&self.scope) != Some(account_id) {
                    let _ = reply.send(Err(CommandFailure::forbidden("you may only change your own profile")));
                    return;
                }
                account_id.clone()
            }
            AccountRequest::Login { email, password } => {
                // A login changes nothing, so it needs no lane.
                let (deps, scope) = (self.deps.clone(), self.scope.clone());
                let (email, password) = (email.clone(), password.clone());
                self.tasks.spawn(async move {
                    let _ = reply.send(login(&deps, &scope, &email, &password, &myself).await);
                });
                self.reap();
                return;
            }
        };
        let lane = lane.as_str().to_owned();
        let job = Job { command_id, digest_input, request, reply };
        if let Some(queue) = self.lanes.get_mut(&lane) {
            queue.push_back(job);
        } else {
            self.lanes.insert(lane.clone(), VecDeque::new());
            self.start(myself, lane, job);
        }
    }

    fn start(&mut self, myself: ActorRef<AccountMsg>, id: String, job: Job) {
        let cached = self.cache.remove(&id);
        let (deps, scope) = (self.deps.clone(), self.scope.clone());
        self.tasks.spawn(async move {
            let (result, loaded) =
                run(&deps, &scope, &id, job.command_id, &job.digest_input, job.request, cached).await;
            let _ = job.reply.send(result);
            // If the actor is gone, its replacement reloads from the log.
            let _ = myself.cast(AccountMsg::Finished { id, loaded: loaded.map(Box::new) });
        });
    }

    fn finished(&mut self, myself: ActorRef<AccountMsg>, id: String, loaded: Option<Box<Loaded<Account>>>) {
        if let Some(l) = loaded {
            self.keep(id.clone(), *l);
        }
        match self.lanes.get_mut(&id).and_then(VecDeque::pop_front) {
            Some(next) => self.start(myself, id, next),
            None => {
                self.lanes.remove(&id);
            }
        }
        self.reap();
    }

    fn remember(&mut self, id: String, loaded: Loaded<Account>) {
        // A running command's result is newer, and is kept when it finishes; a
        // cached state may also have moved on since the login read its own.
        if self.lanes.contains_key(&id) || self.cache.get(&id).is_some_and(|c| c.version >= loaded.version) {
            return;
        }
        self.keep(id, loaded);
    }

    fn keep(&mut self, id: String, loaded: Loaded<Account>) {
        if !self.cache.contains_key(&id) && self.cache.len() >= self.deps.cache_per_tenant {
            let victim = self.cache.keys().next().cloned();
            if let Some(v) = victim {
                self.cache.remove(&v);
            }
        }
        self.cache.insert(id, loaded);
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!("an account task panicked");
            }
        }
    }
}

async fn run(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    command_id: CommandId,
    digest_input: &str,
    request: AccountRequest,
    cached: Option<Loaded<Account>>,
) -> (CommandResult<AccountReply>, Option<Loaded<Account>>) {
    let stamp = match request_digest(deps, scope, digest_input).await {
        Ok(digest) => Stamp { command_id, digest },
        Err(e) => return (Err(e), cached),
    };
    match request {
        AccountRequest::Register { email, password, firstname, lastname } => {
            let account_id = account_id_for(scope, &stamp.command_id);
            let input = NewAccount { account_id, email, password, firstname, lastname, owner: false };
            register(deps, scope, &stamp, input, cached).await
        }
        AccountRequest::UpdateProfile { firstname, lastname, .. } => {
            update_profile(deps, scope, id, &stamp, firstname, lastname, cached).await
        }
        AccountRequest::Login { .. } => unreachable!("logins are dispatched without a lane"),
    }
}

/// Input for a new account, before hashing and sealing.
pub struct NewAccount {
    pub account_id: AccountId,
    pub email: Email,
    pub password: Password,
    pub firstname: PersonName,
    pub lastname: PersonName,
    pub owner: bool,
}

pub fn broken(what: &str, e: impl std::fmt::Display) -> CommandFailure {
    tracing::error!(error = %e, "{what}");
    CommandFailure::internal()
}

/// The email's claim subject in this scope.
pub async fn email_claim_subject(deps: &Deps, scope: &Scope, email: &Email) -> Result<String, CommandFailure> {
    let key = deps.keys.key(&tenant_key_name(scope)).await.map_err(|e| broken("reading the tenant key", e))?;
    let index = key.blind_index("email", &email.normalized());
    Ok(event_subject(scope, EMAIL_CLAIM, &index, EMAIL_RESERVED))
}

/// Hashes the password and seals the personal fields: the command `decide` sees.
pub async fn prepare_registration(
    deps: &Deps,
    scope: &Scope,
    input: &NewAccount,
) -> Result<Registration, CommandFailure> {
    let tenant_kid = tenant_key_name(scope);
    let tenant_key = deps.keys.key(&tenant_kid).await.map_err(|e| broken("reading the tenant key", e))?;
    let person_kid = person_key_name(scope, input.account_id.as_str());
    let person_key = deps.keys.key(&person_kid).await.map_err(|e| broken("creating a person key", e))?;
    let phc = deps.hasher.hash(&input.password).await.map_err(|e| broken("hashing a password", e))?;
    Ok(Registration {
        account_id: input.account_id.as_str().to_owned(),
        email_index: tenant_key.blind_index("email", &input.email.normalized()),
        email: person_key.seal(&person_kid, input.email.as_str().as_bytes()),
        password_hash: tenant_key.seal(&tenant_kid, phc.as_bytes()),
        firstname: person_key.seal(&person_kid, input.firstname.as_str().as_bytes()),
        lastname: person_key.seal(&person_kid, input.lastname.as_str().as_bytes()),
        owner: input.owner,
    })
}

/// What an existing claim means for a registration: the same command seen
/// again, or another account holding the email. A repeat of the command is
/// answered only if it is the same request (digest) and proves the password
/// again: repeating someone's idempotency key must not sign anyone in.
pub async fn existing_claim(
    deps: &Deps,
    scope: &Scope,
    claim: &str,
    stamp: &Stamp,
    password: &Password,
) -> Result<Option<CommandResult<AccountReply>>, CommandFailure> {
    let stored = deps.store.last_on_subject(claim).await.map_err(|e| broken("reading an email claim", e))?;
    let Some(stored) = stored else { return Ok(None) };
    if stored.envelope.command_id != stamp.command_id.as_str() {
        return Ok(Some(Err(CommandFailure::rejected(&AccountError::EmailTaken))));
    }
    Ok(Some(replayed_registration(deps, scope, &stored, stamp, password).await))
}

/// Answers a repeated registration whose claim is `claim`.
async fn replayed_registration(
    deps: &Deps,
    scope: &Scope,
    claim: &Stored,
    stamp: &Stamp,
    password: &Password,
) -> CommandResult<AccountReply> {
    if claim.envelope.request_digest != stamp.digest {
        return Err(CommandFailure::reused_id());
    }
    let owner: EmailReserved =
        serde_json::from_value(claim.envelope.data.clone()).map_err(|e| broken("decoding an email claim", e))?;
    let account =
        load::<Account>(&deps.store, scope, &owner.account_id).await.map_err(|e| broken("loading an account", e))?;
    let phc = match &account.state.password_hash {
        Some(sealed) => Some(deps.keys.open_string(sealed).await.map_err(|e| broken("opening a password hash", e))?),
        None => None,
    };
    match deps.hasher.verify(password, phc).await {
        Ok(true) => Ok(AccountReply::Registered { account_id: owner.account_id, seq: claim.seq }),
        Ok(false) => Err(CommandFailure::reused_id()),
        Err(e) => Err(broken("verifying a password", e)),
    }
}

async fn register(
    deps: &Deps,
    scope: &Scope,
    stamp: &Stamp,
    input: NewAccount,
    cached: Option<Loaded<Account>>,
) -> (CommandResult<AccountReply>, Option<Loaded<Account>>) {
    let claim = match email_claim_subject(deps, scope, &input.email).await {
        Ok(c) => c,
        Err(e) => return (Err(e), cached),
    };
    match existing_claim(deps, scope, &claim, stamp, &input.password).await {
        Ok(Some(answer)) => return (answer, cached),
        Ok(None) => {}
        Err(e) => return (Err(e), cached),
    }
    let registration = match prepare_registration(deps, scope, &input).await {
        Ok(r) => r,
        Err(e) => return (Err(e), cached),
    };
    let cmd = AccountCommand::Register(registration);
    let id = input.account_id.as_str();
    match execute::<Account>(&deps.store, scope, id, cached, stamp, &cmd, deps.snapshot_every).await {
        // A batch seen before was refused as a duplicate without storing anything:
        // answer it as the repeat it is, from its claim.
        Ok(done) if done.replayed => {
            let answer = match existing_claim(deps, scope, &claim, stamp, &input.password).await {
                Ok(Some(answer)) => answer,
                Ok(None) => Err(CommandFailure::conflict()),
                Err(e) => Err(e),
            };
            (answer, Some(done.loaded))
        }
        Ok(done) => (
            Ok(AccountReply::Registered { account_id: input.account_id.to_string(), seq: done.seq }),
            Some(done.loaded),
        ),
        Err(ExecError::Conflict) => {
            // The batch failed a check: most likely another account took the email
            // between our look and our append.
            let answer = match existing_claim(deps, scope, &claim, stamp, &input.password).await {
                Ok(Some(answer)) => answer,
                Ok(None) => Err(CommandFailure::conflict()),
                Err(e) => Err(e),
            };
            (answer, None)
        }
        // The account's id derives from the command id, so an account already
        // there means the id was used for another email: a different request.
        Err(ExecError::Rejected(AccountError::AlreadyRegistered)) => (Err(CommandFailure::reused_id()), None),
        Err(e) => (Err(failure(e, "appending a registration")), None),
    }
}

/// The failure a command reports for an executor error.
pub fn failure(e: ExecError<AccountError>, what: &str) -> CommandFailure {
    match e {
        ExecError::Conflict => CommandFailure::conflict(),
        ExecError::ReusedId => CommandFailure::reused_id(),
        ExecError::Rejected(e) => CommandFailure::rejected(&e),
        ExecError::Broken(e) => broken(what, e),
    }
}

async fn update_profile(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    stamp: &Stamp,
    firstname: PersonName,
    lastname: PersonName,
    cached: Option<Loaded<Account>>,
) -> (CommandResult<AccountReply>, Option<Loaded<Account>>) {
    let current = match cached {
        Some(c) => c,
        None => match load::<Account>(&deps.store, scope, id).await {
            Ok(l) => l,
            Err(e) => return (Err(broken("loading an account", e)), None),
        },
    };
    if !current.state.is_registered() {
        return (Err(CommandFailure::rejected(&AccountError::NotFound)), Some(current));
    }
    let kid = person_key_name(scope, id);
    let key = match deps.keys.existing_key(&kid).await {
        Ok(k) => k,
        Err(e) => return (Err(broken("reading a person key", e)), Some(current)),
    };
    let cmd = AccountCommand::UpdateProfile {
        firstname: key.seal(&kid, firstname.as_str().as_bytes()),
        lastname: key.seal(&kid, lastname.as_str().as_bytes()),
    };
    match execute::<Account>(&deps.store, scope, id, Some(current), stamp, &cmd, deps.snapshot_every).await {
        Ok(done) => (Ok(AccountReply::Updated { seq: done.seq }), Some(done.loaded)),
        Err(e) => (Err(failure(e, "appending a profile update")), None),
    }
}

/// How long a login waits for its own actor to hand over a cached account.
const ASK_CACHE: Duration = Duration::from_secs(5);

/// A login reads the same things for a known and an unknown email, in the
/// same order, up to the hash comparison: the claim, then an account (the
/// holder, or for an unknown email a decoy no account can be) from the actor's
/// cache checked against the log, or loaded. Only the data differ, so neither
/// the time nor the reads tell whether an email has an account.
async fn login(
    deps: &Deps,
    scope: &Scope,
    email: &Email,
    password: &Password,
    actor: &ActorRef<AccountMsg>,
) -> CommandResult<AccountReply> {
    let key = deps.keys.key(&tenant_key_name(scope)).await.map_err(|e| broken("reading the tenant key", e))?;
    let email_index = key.blind_index("email", &email.normalized());
    let claim = event_subject(scope, EMAIL_CLAIM, &email_index, EMAIL_RESERVED);
    let holder = deps
        .store
        .last_on_subject(&claim)
        .await
        .map_err(|e| broken("reading an email claim", e))?
        .and_then(|s| serde_json::from_value::<EmailReserved>(s.envelope.data).ok());
    let id = match &holder {
        Some(h) => h.account_id.clone(),
        None => decoy_account(scope, &email_index).to_string(),
    };
    // The actor's cached state, checked against the log's newest sequence for the
    // account, spares nats-server a consumer for every login; a password changed
    // anywhere is still seen, since the check reads the log itself.
    let cached = match actor.call(|port| AccountMsg::Cached(id.clone(), port), Some(ASK_CACHE)).await {
        Ok(CallResult::Success(cached)) => cached,
        _ => None,
    };
    let account = match cached {
        Some(c) => refresh::<Account>(&deps.store, scope, &id, *c).await,
        None => load::<Account>(&deps.store, scope, &id).await,
    }
    .map_err(|e| broken("loading an account", e))?;
    let owner = account.state.owner;
    let phc = match (&holder, &account.state.password_hash) {
        (Some(_), Some(sealed)) => {
            Some(deps.keys.open_string(sealed).await.map_err(|e| broken("opening a password hash", e))?)
        }
        _ => None,
    };
    let _ = actor.cast(AccountMsg::Remember { id: id.clone(), loaded: Box::new(account) });
    // With no hash, `verify` compares against a dummy one: the same work.
    let ok = deps.hasher.verify(password, phc).await.map_err(|e| broken("verifying a password", e))?;
    match (ok, holder) {
        (true, Some(_)) => Ok(AccountReply::LoggedIn { account_id: id, owner }),
        _ => Err(CommandFailure::invalid_credentials()),
    }
}

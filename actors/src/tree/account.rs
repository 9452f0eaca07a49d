//! The account handler: what the aggregate actor needs to know about accounts.
//! A registration's lane is the account its command id derives; a profile
//! update's is the account it names, and only that account may send it; a
//! login is free (it changes nothing) and reads the cache. Preparation happens
//! here, outside `decide`: hashing, sealing, the email's claim.

use crate::command::{
    AccountReply, AccountRequest, CommandEnvelope, CommandFailure, CommandResult, EmailProof, IssuedSession, Principal,
    SessionRequest, SessionSelection,
};
use crate::domain::access::{ACCESS_ID, Access, AccessCommand, AccessError, Actor};
use crate::domain::account::{
    Account, AccountCommand, AccountError, AccountEvent, AccountId, ClaimMove, EMAIL_CLAIM, EMAIL_RELEASED, Email,
    EmailReserved, InvitationUse, Locale, Membership, NewChallenge, NewSession, Password, PersonName, Registration,
    RevokeReason, VerificationPurpose, WhichSessions,
};
use crate::domain::challenge::{LinkToken, Purpose, Secret};
use crate::domain::ids::CommandId;
use crate::domain::session::{RefreshToken, SessionId};
use crate::domain::tenant::Scope;
use crate::store::event_store::{Stamp, Stored, aggregate_filter};
use crate::store::seal::{DataKey, Sealed, person_key_name, tenant_key_name};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Cache, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::executor::{ExecError, Loaded, execute, load, load_uniform, refresh};

/// The accounts of one scope (a tenant, or the platform's administrators).
pub struct AccountHandler;

pub type AccountActor = AggregateActor<AccountHandler>;
pub type AccountMsg = AggregateMsg<AccountHandler>;

impl Handler for AccountHandler {
    type Aggregate = Account;
    type Request = AccountRequest;
    type Reply = AccountReply;
    const NAME: &'static str = "AccountActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<AccountRequest>) -> CommandResult<Route> {
        match &envelope.request {
            AccountRequest::Register { .. } => Ok(Route::Lane(account_id_for(scope, &envelope.command_id).to_string())),
            // Only the account itself changes its profile or asks for its
            // mails; checked here, where the decision is made, whoever sent the
            // command.
            AccountRequest::UpdateProfile { account_id, .. }
            | AccountRequest::ResendVerification { account_id }
            | AccountRequest::VerifyEmail { proof: EmailProof::Code { account_id, .. } } => {
                if envelope.principal.account_in(scope) != Some(account_id) {
                    return Err(CommandFailure::forbidden("you may only act on your own account"));
                }
                Ok(Route::Lane(account_id.to_string()))
            }
            // A link token is its own proof, signed in or not.
            AccountRequest::VerifyEmail { proof: EmailProof::Token { token } } => {
                Ok(Route::Lane(token.account_id().to_string()))
            }
            // So is a refresh token (an expired access token is why it is used).
            AccountRequest::RefreshSession { token } => Ok(Route::Lane(token.account_id().to_string())),
            AccountRequest::RevokeSessions { account_id, .. } => {
                if envelope.principal.account_in(scope) != Some(account_id) {
                    return Err(CommandFailure::forbidden("you may only end your own sessions"));
                }
                Ok(Route::Lane(account_id.to_string()))
            }
            AccountRequest::ChangePassword { account_id, .. }
            | AccountRequest::ChangeEmail { account_id, .. }
            | AccountRequest::DeleteAccount { account_id, .. } => {
                if envelope.principal.account_in(scope) != Some(account_id) {
                    return Err(CommandFailure::forbidden("you may only change your own account"));
                }
                Ok(Route::Lane(account_id.to_string()))
            }
            // Whether the sender owns the tenant is checked when it runs.
            AccountRequest::RemoveUser { account_id } => {
                if envelope.principal.actor_in(scope).is_none() {
                    return Err(CommandFailure::forbidden("only the tenant's owner may remove users"));
                }
                Ok(Route::Lane(account_id.to_string()))
            }
            // A reset link's token is its own proof.
            AccountRequest::ResetPassword { token, .. } => Ok(Route::Lane(token.account_id().to_string())),
            // An invitation's token names the account id it reserves.
            AccountRequest::AcceptInvitation { token, .. } => Ok(Route::Lane(token.account_id().to_string())),
            // Both find their account by its email first.
            AccountRequest::Login { .. } | AccountRequest::RequestPasswordReset { .. } => Ok(Route::Free),
        }
    }

    async fn run(
        ctx: &Ctx,
        id: &str,
        envelope: CommandEnvelope<AccountRequest>,
        state: &mut Option<Loaded<Account>>,
    ) -> CommandResult<AccountReply> {
        let Ctx { scope, deps, .. } = ctx;
        let stamp = stamp_for(deps, scope, &envelope).await?;
        let envelope_session = envelope.principal.session().cloned();
        let envelope_actor = envelope.principal.actor_in(scope);
        match envelope.request {
            AccountRequest::Register { email, password, firstname, lastname, locale, session } => {
                let account_id = account_id_for(scope, &stamp.command_id);
                let input = NewAccount {
                    account_id,
                    email,
                    password,
                    firstname,
                    lastname,
                    owner: false,
                    locale,
                    invitation: None,
                };
                let reply = register(deps, scope, &stamp, input, state).await?;
                let (AccountReply::Registered { account_id, seq, .. }, Some(request)) = (&reply, session) else {
                    return Ok(reply);
                };
                // The registration is in the log (or was, for a retry that proved the
                // password again): open a session for it. A retry opens another.
                let (session, at) = start_session(deps, scope, account_id, &stamp, &request, state).await?;
                Ok(AccountReply::Registered {
                    account_id: account_id.clone(),
                    seq: at.max(*seq),
                    session: Some(session),
                })
            }
            AccountRequest::AcceptInvitation { token, password, firstname, lastname, locale, session } => {
                let acceptance = Acceptance { token, password, firstname, lastname, locale, session };
                accept_invitation(deps, scope, &stamp, acceptance, state).await
            }
            AccountRequest::RefreshSession { token } => refresh_session(deps, scope, id, &stamp, &token, state).await,
            AccountRequest::RevokeSessions { which, .. } => {
                let current = envelope_session.as_ref();
                let (which, reason) = match which {
                    SessionSelection::Current => match current {
                        Some(sid) => (WhichSessions::One(sid.to_string()), RevokeReason::Logout),
                        None => return Err(CommandFailure::new("BAD_USER_INPUT", "this token belongs to no session")),
                    },
                    SessionSelection::All => (WhichSessions::All, RevokeReason::LogoutEverywhere),
                    SessionSelection::One { session_id } => {
                        let reason =
                            if current == Some(&session_id) { RevokeReason::Logout } else { RevokeReason::Revoked };
                        (WhichSessions::One(session_id.to_string()), reason)
                    }
                };
                let cmd = AccountCommand::RevokeSessions { which, reason };
                let (seq, events) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::SessionsRevoked { count: sessions_ended(&events), seq })
            }
            AccountRequest::UpdateProfile { firstname, lastname, locale, .. } => {
                let kid = person_key_name(scope, id);
                let key = deps.keys.existing_key(&kid).await.map_err(|e| broken("reading a person key", e))?;
                let cmd = AccountCommand::UpdateProfile {
                    firstname: key.seal(&kid, firstname.as_str().as_bytes()),
                    lastname: key.seal(&kid, lastname.as_str().as_bytes()),
                    locale,
                };
                let (seq, _) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::Updated { seq })
            }
            AccountRequest::ResendVerification { .. } => {
                let challenge = new_challenge(deps, scope, id, now()).await?;
                let min_interval_secs = deps.accounts.resend_interval_secs;
                let cmd = AccountCommand::RequestVerification { challenge, min_interval_secs };
                let (seq, _) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::VerificationSent { seq })
            }
            AccountRequest::VerifyEmail { proof } => {
                let at = now();
                let mut opened = None;
                let mut claims = None;
                let current = loaded(deps, scope, id, state).await?.state.clone();
                if let Some(open) = current.verification.as_ref() {
                    opened = open_secret(deps, &open.secret).await?.map(|s| (open.challenge_id.clone(), s));
                    if open.purpose == VerificationPurpose::EmailChange
                        && let Some(old_index) = &current.email_index
                    {
                        claims = Some(claim_move(deps, scope, id, &open.email_index, old_index).await?);
                    }
                }
                let (seq, _) = decide_on_registered(deps, scope, id, &stamp, state, move |_| {
                    let accepted = opened.filter(|(_, secret)| match &proof {
                        EmailProof::Code { code, .. } => secret.accepts_code(Purpose::VerifyEmail, code),
                        EmailProof::Token { token } => secret.accepts_token(Purpose::VerifyEmail, token),
                    });
                    match accepted {
                        Some((challenge_id, _)) => Ok(AccountCommand::ConfirmEmail { challenge_id, now: at, claims }),
                        None => Err(CommandFailure::rejected(&AccountError::InvalidProof)),
                    }
                })
                .await?;
                Ok(AccountReply::Verified { account_id: id.to_owned(), seq })
            }
            AccountRequest::ResetPassword { token, password } => {
                let at = now();
                let mut opened = None;
                if let Some(open) = loaded(deps, scope, id, state).await?.state.password_reset.as_ref() {
                    opened = open_secret(deps, &open.secret).await?.map(|s| (open.challenge_id.clone(), s));
                }
                let Some((challenge_id, _)) =
                    opened.filter(|(_, secret)| secret.accepts_token(Purpose::ResetPassword, &token))
                else {
                    return Err(CommandFailure::rejected(&AccountError::InvalidProof));
                };
                let password_hash = seal_password(deps, scope, &password).await?;
                let cmd = AccountCommand::ResetPassword { challenge_id, password_hash, now: at };
                let (seq, events) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::PasswordSet { seq, sessions_ended: sessions_ended(&events) })
            }
            AccountRequest::ChangeEmail { new_email, password, .. } => {
                check_password(deps, scope, id, &password, state).await?;
                let (new_index, filter) = email_claim(deps, scope, &new_email).await?;
                if let Claim::Held(_) = read_claim(deps, &filter).await? {
                    return Err(CommandFailure::rejected(&AccountError::EmailTaken));
                }
                let kid = person_key_name(scope, id);
                let key = deps.keys.existing_key(&kid).await.map_err(|e| broken("reading a person key", e))?;
                let challenge = new_challenge(deps, scope, id, now()).await?;
                let new_email = key.seal(&kid, new_email.as_str().as_bytes());
                let cmd = AccountCommand::RequestEmailChange { challenge, new_email, new_index };
                let (seq, _) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::ChangeRequested { seq })
            }
            AccountRequest::DeleteAccount { password, .. } => {
                check_password(deps, scope, id, &password, state).await?;
                erase(deps, scope, id, &stamp, state).await
            }
            AccountRequest::RemoveUser { .. } => {
                let actor = envelope_actor.as_ref().ok_or_else(|| CommandFailure::forbidden("sign in first"))?;
                if !may_remove_members(deps, scope, actor).await? {
                    return Err(CommandFailure::forbidden("this needs the permission remove_members"));
                }
                erase(deps, scope, id, &stamp, state).await
            }
            AccountRequest::ChangePassword { current_password, new_password, .. } => {
                check_password(deps, scope, id, &current_password, state).await?;
                let password_hash = seal_password(deps, scope, &new_password).await?;
                let keep = envelope_session.as_ref().map(ToString::to_string);
                let cmd = AccountCommand::ChangePassword { password_hash, keep };
                let (seq, events) = decide_on_registered(deps, scope, id, &stamp, state, |_| Ok(cmd)).await?;
                Ok(AccountReply::PasswordSet { seq, sessions_ended: sessions_ended(&events) })
            }
            // `route` sends these down the free path.
            AccountRequest::Login { .. } | AccountRequest::RequestPasswordReset { .. } => {
                Err(CommandFailure::internal())
            }
        }
    }

    async fn run_free(
        ctx: &Ctx,
        envelope: CommandEnvelope<AccountRequest>,
        cache: Cache<Self>,
    ) -> CommandResult<AccountReply> {
        let stamp = stamp_for(&ctx.deps, &ctx.scope, &envelope).await?;
        match envelope.request {
            AccountRequest::Login { email, password, session } => {
                login(ctx, &stamp, &email, &password, &session, &cache).await
            }
            AccountRequest::RequestPasswordReset { email } => request_reset(ctx, &stamp, &email, &cache).await,
            _ => Err(CommandFailure::internal()),
        }
    }
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
    Ok(tenant_key(deps, scope).await?.blind_index("request", digest_input))
}

/// The stamp of a command in `scope`: its id, its request's digest, who asked,
/// and where from. The client is sealed under the acting account's person key
/// (erasing the person erases it), else under the scope's key.
pub async fn stamp_for<R: serde::Serialize>(
    deps: &Deps,
    scope: &Scope,
    envelope: &CommandEnvelope<R>,
) -> Result<Stamp, CommandFailure> {
    let digest = request_digest(deps, scope, &envelope.digest_input()).await?;
    let client = match &envelope.client {
        None => None,
        Some(client) => {
            let kid = match &envelope.principal {
                Principal::Account { scope: home, account_id, .. } => person_key_name(home, account_id.as_str()),
                Principal::Anonymous | Principal::Node | Principal::Token { .. } => tenant_key_name(scope),
            };
            let key = deps.keys.key(&kid).await.map_err(|e| broken("reading the key for a client", e))?;
            let plain = serde_json::to_vec(&client.bounded()).map_err(|e| broken("encoding a client", e))?;
            Some(key.seal(&kid, &plain))
        }
    };
    Ok(Stamp { command_id: envelope.command_id.clone(), digest, actor: envelope.principal.event_actor(), client })
}

/// The scope's data key (created on first use).
async fn tenant_key(deps: &Deps, scope: &Scope) -> Result<DataKey, CommandFailure> {
    deps.keys.key(&tenant_key_name(scope)).await.map_err(|e| broken("reading the tenant key", e))
}

/// Input for a new account, before hashing and sealing.
pub struct NewAccount {
    pub account_id: AccountId,
    pub email: Email,
    pub password: Password,
    pub firstname: PersonName,
    pub lastname: PersonName,
    pub owner: bool,
    pub locale: Locale,
    /// The invitation the account accepts: its address is proven by the
    /// invitation's link, so no verification is mailed.
    pub invitation: Option<InvitationUse>,
}

/// The time commands are decided at, in Unix seconds.
fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether `sender` holds `remove_members` in the tenant's access control; in
/// a tenant from before roles, whether it is the tenant's owner.
async fn may_remove_members(deps: &Deps, scope: &Scope, sender: &Actor) -> Result<bool, CommandFailure> {
    let access = load::<Access>(&deps.store, scope, ACCESS_ID).await.map_err(|e| broken("loading access", e))?;
    if access.version > 0 {
        return Ok(access.state.effective(sender, now()).contains("remove_members"));
    }
    let Actor::Account(sender) = sender else { return Ok(false) };
    let account = load::<Account>(&deps.store, scope, sender).await.map_err(|e| broken("loading the sender", e))?;
    Ok(account.state.is_registered() && account.state.owner)
}

/// Where `account_id` stands in the tenant's access control; in a tenant from
/// before roles, its creator (`creator`) is the one owner.
async fn membership(deps: &Deps, scope: &Scope, account_id: &str, creator: bool) -> Result<Membership, CommandFailure> {
    let access = load::<Access>(&deps.store, scope, ACCESS_ID).await.map_err(|e| broken("loading access", e))?;
    if access.version == 0 {
        return Ok(Membership { last_owner: creator, access_seq: None });
    }
    Ok(Membership { last_owner: access.state.is_last_owner(account_id), access_seq: Some(access.version) })
}

/// How many sessions a decision ended.
fn sessions_ended(events: &[AccountEvent]) -> usize {
    events.iter().filter(|e| matches!(e, AccountEvent::SessionRevoked(_))).count()
}

/// Hashes a password and seals the hash under the scope's data key.
async fn seal_password(deps: &Deps, scope: &Scope, password: &Password) -> Result<Sealed, CommandFailure> {
    let phc = deps.hasher.hash(password).await.map_err(|e| broken("hashing a password", e))?;
    let kid = tenant_key_name(scope);
    Ok(tenant_key(deps, scope).await?.seal(&kid, phc.as_bytes()))
}

/// A fresh verification challenge for `account_id`.
async fn new_challenge(deps: &Deps, scope: &Scope, account_id: &str, at: i64) -> Result<NewChallenge, CommandFailure> {
    challenge_for(deps, scope, account_id, at, deps.accounts.verification_ttl_secs).await
}

/// A fresh challenge valid `ttl_secs`, its secret sealed under the person's key
/// (created on first use: a registration's challenge is sealed before the
/// account exists).
async fn challenge_for(
    deps: &Deps,
    scope: &Scope,
    account_id: &str,
    at: i64,
    ttl_secs: i64,
) -> Result<NewChallenge, CommandFailure> {
    let kid = person_key_name(scope, account_id);
    let key = deps.keys.key(&kid).await.map_err(|e| broken("reading a person key", e))?;
    Ok(NewChallenge {
        challenge_id: uuid::Uuid::now_v7().to_string(),
        secret: key.seal(&kid, Secret::generate().as_bytes()),
        requested_at: at,
        expires_at: at + ttl_secs,
    })
}

/// The email's index in this scope (a keyed hash) and the filter of its claim's
/// subjects (`evt.{scope}.email.{index}.>`).
pub(crate) async fn email_claim(deps: &Deps, scope: &Scope, email: &Email) -> Result<(String, String), CommandFailure> {
    let index = tenant_key(deps, scope).await?.blind_index("email", &email.normalized());
    let filter = aggregate_filter(scope, EMAIL_CLAIM, &index);
    Ok((index, filter))
}

/// Where an email's claim stands: its last claim event decides.
enum Claim {
    /// Nobody holds it; a new claim must expect sequence `after` (0: never claimed).
    Free { after: u64 },
    /// An account holds it: the `EmailReserved` event.
    Held(Box<Stored>),
}

async fn read_claim(deps: &Deps, filter: &str) -> Result<Claim, CommandFailure> {
    let last = deps.store.last_on_subject(filter).await.map_err(|e| broken("reading an email claim", e))?;
    Ok(match last {
        None => Claim::Free { after: 0 },
        Some(s) if s.envelope.event_type == EMAIL_RELEASED => Claim::Free { after: s.seq },
        Some(s) => Claim::Held(Box::new(s)),
    })
}

/// The account holding an email, if any.
async fn holder_of(deps: &Deps, filter: &str) -> Result<Option<String>, CommandFailure> {
    Ok(match read_claim(deps, filter).await? {
        Claim::Held(s) => serde_json::from_value::<EmailReserved>(s.envelope.data).ok().map(|h| h.account_id),
        Claim::Free { .. } => None,
    })
}

/// The sequence of the claim `account` holds on `index` (which it must hold).
async fn own_claim(deps: &Deps, scope: &Scope, account: &str, index: &str) -> Result<u64, CommandFailure> {
    match read_claim(deps, &aggregate_filter(scope, EMAIL_CLAIM, index)).await? {
        Claim::Held(s) if s.envelope.data.get("account_id").and_then(|v| v.as_str()) == Some(account) => Ok(s.seq),
        _ => Err(broken("an account's email claim", "the account does not hold its own email's claim")),
    }
}

/// How an email change moves the claims: the new address must be free.
async fn claim_move(
    deps: &Deps,
    scope: &Scope,
    account: &str,
    new_index: &str,
    old_index: &str,
) -> Result<ClaimMove, CommandFailure> {
    let new_after = match read_claim(deps, &aggregate_filter(scope, EMAIL_CLAIM, new_index)).await? {
        Claim::Free { after } => after,
        Claim::Held(_) => return Err(CommandFailure::rejected(&AccountError::EmailTaken)),
    };
    Ok(ClaimMove { new_after, old_seq: own_claim(deps, scope, account, old_index).await? })
}

/// Whether `password` matches a sealed hash. With no hash it compares against a
/// dummy one, the same work, so an unknown account takes as long as a known one.
async fn password_matches(deps: &Deps, sealed: Option<&Sealed>, password: &Password) -> Result<bool, CommandFailure> {
    let phc = match sealed {
        Some(s) => Some(deps.keys.open_string(s).await.map_err(|e| broken("opening a password hash", e))?),
        None => None,
    };
    deps.hasher.verify(password, phc).await.map_err(|e| broken("verifying a password", e))
}

/// The secret of an open challenge, opened with the person's key; `None` if it
/// does not have the length of one.
async fn open_secret(deps: &Deps, sealed: &Sealed) -> Result<Option<Secret>, CommandFailure> {
    let bytes = deps.keys.open(sealed).await.map_err(|e| broken("opening a challenge", e))?;
    Ok(Secret::from_bytes(&bytes))
}

/// Checks the account's password; a wrong one is refused as bad input.
pub(crate) async fn check_password(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    password: &Password,
    state: &mut Option<Loaded<Account>>,
) -> Result<(), CommandFailure> {
    let current = loaded(deps, scope, id, state).await?;
    if !current.state.is_registered() {
        return Err(CommandFailure::rejected(&AccountError::NotFound));
    }
    if password_matches(deps, current.state.password_hash.as_ref(), password).await? {
        Ok(())
    } else {
        Err(CommandFailure::new("BAD_USER_INPUT", "the password is not correct"))
    }
}

/// What `acceptInvitation` carries.
struct Acceptance {
    token: LinkToken,
    password: Password,
    firstname: PersonName,
    lastname: PersonName,
    locale: Locale,
    session: SessionRequest,
}

/// Accepts an invitation. The token must match the open invitation's secret.
/// A newcomer is registered under the account id the invitation reserved, in
/// one batch with the invitation's acceptance (expecting the access history
/// the invitation was checked on); an account that already holds the invited
/// address proves its password and gets the role. Both get a session.
async fn accept_invitation(
    deps: &Deps,
    scope: &Scope,
    stamp: &Stamp,
    a: Acceptance,
    state: &mut Option<Loaded<Account>>,
) -> CommandResult<AccountReply> {
    let closed = || CommandFailure::rejected(&AccessError::InvitationClosed);
    let invitation_id = a.token.account_id().clone();
    let access = load::<Access>(&deps.store, scope, ACCESS_ID).await.map_err(|e| broken("loading access", e))?;
    let invitation = access.state.open_invitation(invitation_id.as_str(), now()).ok_or_else(closed)?.clone();
    // An open invitation's key exists: revoking or accepting closes it first.
    let secret = open_secret(deps, &invitation.secret).await?.ok_or_else(closed)?;
    if !secret.accepts_token(Purpose::Invitation, &a.token) {
        return Err(closed());
    }
    let email = deps.keys.open(&invitation.email).await.map_err(|e| broken("opening an invitation's email", e))?;
    let email = String::from_utf8(email)
        .ok()
        .and_then(|e| Email::parse(&e).ok())
        .ok_or_else(|| broken("an invitation's email", "is not an address"))?;
    let (_, claim) = email_claim(deps, scope, &email).await?;
    let (account_id, seq) = match holder_of(deps, &claim).await? {
        None => {
            let input = NewAccount {
                account_id: invitation_id.clone(),
                email,
                password: a.password,
                firstname: a.firstname,
                lastname: a.lastname,
                owner: false,
                locale: a.locale,
                invitation: Some(InvitationUse {
                    invitation_id: invitation_id.to_string(),
                    role: invitation.role.clone(),
                    access_seq: access.version,
                }),
            };
            match register(deps, scope, stamp, input, state).await? {
                AccountReply::Registered { account_id, seq, .. } => (account_id, seq),
                _ => return Err(CommandFailure::internal()),
            }
        }
        Some(holder) => {
            // An account of this tenant has the address: it proves its password,
            // and the invitation's reserved id will never be an account.
            let mut holder_state = None;
            check_password(deps, scope, &holder, &a.password, &mut holder_state).await?;
            let cmd = AccessCommand::AcceptInvitation {
                invitation_id: invitation_id.to_string(),
                account_id: holder.clone(),
                now: now(),
            };
            let done = execute::<Access>(&deps.store, scope, ACCESS_ID, Some(access), stamp, &cmd, deps.snapshot_every)
                .await
                .map_err(|e| failure(e, "accepting an invitation"))?;
            let kid = person_key_name(scope, invitation_id.as_str());
            deps.keys.destroy(&kid).await.map_err(|e| broken("destroying an invitation's key", e))?;
            let (session, at) = start_session(deps, scope, &holder, stamp, &a.session, &mut holder_state).await?;
            return Ok(AccountReply::Registered { account_id: holder, seq: at.max(done.seq), session: Some(session) });
        }
    };
    let (session, at) = start_session(deps, scope, &account_id, stamp, &a.session, state).await?;
    Ok(AccountReply::Registered { account_id, seq: at.max(seq), session: Some(session) })
}

/// Erases an account: ends its sessions, releases its email, then destroys the
/// person's key, which makes every personal field of theirs in the log
/// unreadable. A crash between the append and the destruction is repaired by
/// the next erasure asked of the account, which destroys the key again (and
/// answers NOT_FOUND, as for any account that is gone).
async fn erase(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    stamp: &Stamp,
    state: &mut Option<Loaded<Account>>,
) -> CommandResult<AccountReply> {
    let current = loaded(deps, scope, id, state).await?;
    let kid = person_key_name(scope, id);
    if current.state.erased {
        // Already erased; destroying the key again repairs a crash that came
        // between the erasure's append and the key's destruction.
        deps.keys.destroy(&kid).await.map_err(|e| broken("destroying a person key", e))?;
        return Err(CommandFailure::rejected(&AccountError::NotFound));
    }
    let index = current.state.email_index.clone().ok_or_else(|| CommandFailure::rejected(&AccountError::NotFound))?;
    let claim_seq = own_claim(deps, scope, id, &index).await?;
    let membership = membership(deps, scope, id, current.state.owner).await?;
    let erase = AccountCommand::Erase { claim_seq, membership };
    let (seq, events) = decide_on_registered(deps, scope, id, stamp, state, |_| Ok(erase)).await?;
    deps.keys.destroy(&kid).await.map_err(|e| broken("destroying a person key", e))?;
    Ok(AccountReply::Erased { seq, sessions_ended: sessions_ended(&events) })
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
    // The platform's administrators come from the node's configuration, whose
    // author vouches for the address; everyone else proves it.
    let verification = match (scope, &input.invitation) {
        (Scope::Platform, _) | (_, Some(_)) => None,
        (Scope::Tenant(_), None) => Some(new_challenge(deps, scope, input.account_id.as_str(), now()).await?),
    };
    Ok(Registration {
        account_id: input.account_id.as_str().to_owned(),
        email_index: tenant_key.blind_index("email", &input.email.normalized()),
        email: person_key.seal(&person_kid, input.email.as_str().as_bytes()),
        password_hash: seal_password(deps, scope, &input.password).await?,
        firstname: person_key.seal(&person_kid, input.firstname.as_str().as_bytes()),
        lastname: person_key.seal(&person_kid, input.lastname.as_str().as_bytes()),
        owner: input.owner,
        locale: input.locale.clone(),
        verification,
        email_claim_after: 0,
        invitation: input.invitation.clone(),
    })
}

/// What the email's claim means for a registration: free (after which
/// sequence), the same command seen again, or another account holding the
/// email. A repeat of the command is answered only if it is the same request
/// (digest) and proves the password again: repeating someone's idempotency key
/// must not sign anyone in.
async fn existing_claim(
    deps: &Deps,
    scope: &Scope,
    claim: &str,
    stamp: &Stamp,
    password: &Password,
) -> Result<Result<u64, CommandResult<AccountReply>>, CommandFailure> {
    let stored = match read_claim(deps, claim).await? {
        Claim::Free { after } => return Ok(Ok(after)),
        Claim::Held(stored) => stored,
    };
    if stored.envelope.command_id != stamp.command_id.as_str() {
        return Ok(Err(Err(CommandFailure::rejected(&AccountError::EmailTaken))));
    }
    Ok(Err(replayed_registration(deps, scope, &stored, stamp, password).await))
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
    if password_matches(deps, account.state.password_hash.as_ref(), password).await? {
        Ok(AccountReply::Registered { account_id: owner.account_id, seq: claim.seq, session: None })
    } else {
        Err(CommandFailure::reused_id())
    }
}

/// The claim check again, after an append that did not land: a batch seen
/// before, or an email taken between the first check and the append.
async fn after_refused_append(
    deps: &Deps,
    scope: &Scope,
    claim: &str,
    stamp: &Stamp,
    password: &Password,
) -> CommandResult<AccountReply> {
    match existing_claim(deps, scope, claim, stamp, password).await? {
        Ok(_) => Err(CommandFailure::conflict()),
        Err(answer) => answer,
    }
}

async fn register(
    deps: &Deps,
    scope: &Scope,
    stamp: &Stamp,
    input: NewAccount,
    state: &mut Option<Loaded<Account>>,
) -> CommandResult<AccountReply> {
    let (_, claim) = email_claim(deps, scope, &input.email).await?;
    let after = match existing_claim(deps, scope, &claim, stamp, &input.password).await? {
        Ok(after) => after,
        Err(answer) => return answer,
    };
    let mut registration = prepare_registration(deps, scope, &input).await?;
    registration.email_claim_after = after;
    let cmd = AccountCommand::Register(Box::new(registration));
    let id = input.account_id.as_str();
    match execute::<Account>(&deps.store, scope, id, state.take(), stamp, &cmd, deps.snapshot_every).await {
        // A batch seen before was refused as a duplicate without storing anything:
        // answer it as the repeat it is, from its claim.
        Ok(done) if done.replayed => {
            *state = Some(done.loaded);
            after_refused_append(deps, scope, &claim, stamp, &input.password).await
        }
        Ok(done) => {
            *state = Some(done.loaded);
            Ok(AccountReply::Registered { account_id: input.account_id.to_string(), seq: done.seq, session: None })
        }
        // The batch failed a check: most likely another account took the email
        // between our look and our append.
        Err(ExecError::Conflict) => after_refused_append(deps, scope, &claim, stamp, &input.password).await,
        // The account's id derives from the command id, so an account already
        // there means the id was used for another email: a different request.
        Err(ExecError::Rejected(AccountError::AlreadyRegistered)) => Err(CommandFailure::reused_id()),
        Err(e) => Err(failure(e, "appending a registration")),
    }
}

/// The failure a command reports for an executor error.
pub fn failure<E: crate::domain::aggregate::DomainError>(e: ExecError<E>, what: &str) -> CommandFailure {
    match e {
        ExecError::Conflict => CommandFailure::conflict(),
        ExecError::ReusedId => CommandFailure::reused_id(),
        ExecError::Rejected(e) => CommandFailure::rejected(&e),
        ExecError::Broken(e) => broken(what, e),
    }
}

/// The account's state: the actor's cached copy, or loaded from the log.
async fn loaded<'s>(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    state: &'s mut Option<Loaded<Account>>,
) -> Result<&'s Loaded<Account>, CommandFailure> {
    if state.is_none() {
        *state = Some(load::<Account>(&deps.store, scope, id).await.map_err(|e| broken("loading an account", e))?);
    }
    Ok(state.as_ref().expect("filled above"))
}

/// Runs a command that only a registered account can take: NOT_FOUND
/// otherwise. `command` builds it from the current state (a proof is checked
/// there, against the state the decision is made on); its error is the answer.
async fn decide_on_registered(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    stamp: &Stamp,
    state: &mut Option<Loaded<Account>>,
    command: impl FnOnce(&Loaded<Account>) -> Result<AccountCommand, CommandFailure>,
) -> Result<(u64, Vec<AccountEvent>), CommandFailure> {
    let current = loaded(deps, scope, id, state).await?;
    if !current.state.is_registered() {
        return Err(CommandFailure::rejected(&AccountError::NotFound));
    }
    let cmd = command(current)?;
    let current = state.take();
    let done = execute::<Account>(&deps.store, scope, id, current, stamp, &cmd, deps.snapshot_every)
        .await
        .map_err(|e| failure(e, "appending an account change"))?;
    *state = Some(done.loaded);
    Ok((done.seq, done.events))
}

/// A session's refresh token's keyed hash: what the log keeps instead of it.
async fn refresh_hash(deps: &Deps, scope: &Scope, token: &RefreshToken) -> Result<String, CommandFailure> {
    Ok(tenant_key(deps, scope).await?.blind_index("refresh", &token.expose()))
}

/// Opens a session for a registered account whose proof (a password) was just
/// checked. Its append has a command id of its own: a retried sign-in opens a
/// session of its own, since the first one's refresh token is nowhere to be read
/// again.
async fn start_session(
    deps: &Deps,
    scope: &Scope,
    account_id: &str,
    stamp: &Stamp,
    request: &SessionRequest,
    state: &mut Option<Loaded<Account>>,
) -> Result<(IssuedSession, u64), CommandFailure> {
    let account = AccountId::parse(account_id).map_err(|e| broken("an account id from the log", e))?;
    let session_id = SessionId::fresh();
    let token = RefreshToken::generate(&account, &session_id);
    let at = now();
    let user_agent = match &request.user_agent {
        Some(ua) => {
            let kid = person_key_name(scope, account_id);
            let key = deps.keys.existing_key(&kid).await.map_err(|e| broken("reading a person key", e))?;
            Some(key.seal(&kid, ua.as_str().as_bytes()))
        }
        None => None,
    };
    let session = NewSession {
        session_id: session_id.to_string(),
        refresh_hash: refresh_hash(deps, scope, &token).await?,
        user_agent,
        at,
        expires_at: at + deps.accounts.refresh_ttl_secs,
    };
    let cmd = AccountCommand::StartSession { session, max_sessions: deps.accounts.max_sessions };
    let own = stamp.again(CommandId::fresh());
    let (seq, _) = decide_on_registered(deps, scope, account_id, &own, state, |_| Ok(cmd)).await?;
    let issued = IssuedSession {
        session_id: session_id.to_string(),
        refresh_token: token.expose(),
        expires_at: at + deps.accounts.refresh_ttl_secs,
    };
    Ok((issued, seq))
}

/// Rotates a session's refresh token. A token rotated away before ends the
/// session, and its presenter is told the token is not valid, like any other.
async fn refresh_session(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    stamp: &Stamp,
    token: &RefreshToken,
    state: &mut Option<Loaded<Account>>,
) -> CommandResult<AccountReply> {
    let presented = refresh_hash(deps, scope, token).await?;
    let next = RefreshToken::generate(token.account_id(), token.session_id());
    let at = now();
    let expires_at = at + deps.accounts.refresh_ttl_secs;
    let cmd = AccountCommand::RefreshSession {
        session_id: token.session_id().to_string(),
        presented,
        next: refresh_hash(deps, scope, &next).await?,
        at,
        expires_at,
    };
    let current = loaded(deps, scope, id, state).await?;
    if !current.state.is_registered() {
        return Err(CommandFailure::rejected(&AccountError::InvalidRefreshToken));
    }
    let (seq, events) = decide_on_registered(deps, scope, id, stamp, state, |_| Ok(cmd)).await?;
    match events.first() {
        Some(AccountEvent::SessionRefreshed(_)) => Ok(AccountReply::Refreshed {
            account_id: id.to_owned(),
            session: IssuedSession {
                session_id: token.session_id().to_string(),
                refresh_token: next.expose(),
                expires_at,
            },
            seq,
        }),
        Some(AccountEvent::SessionRevoked(_)) => {
            tracing::warn!(session = %token.session_id(), "a rotated refresh token was used again; the session is revoked");
            Err(CommandFailure::rejected(&AccountError::InvalidRefreshToken))
        }
        // A retry of a refresh already applied: its new token was handed out once
        // and is not kept, so the retry cannot have it.
        _ => Err(CommandFailure::rejected(&AccountError::InvalidRefreshToken)),
    }
}

/// A login reads the same things for a known and an unknown email, in the
/// same order, up to the hash comparison: the claim, then an account (the
/// holder, or for an unknown email a decoy no account can be) from the actor's
/// cache checked against the log, or loaded. Only the data differ, so neither
/// the time nor the reads tell whether an email has an account.
async fn login(
    ctx: &Ctx,
    stamp: &Stamp,
    email: &Email,
    password: &Password,
    session: &SessionRequest,
    cache: &Cache<AccountHandler>,
) -> CommandResult<AccountReply> {
    let Ctx { scope, deps, .. } = ctx;
    let (email_index, claim) = email_claim(deps, scope, email).await?;
    let holder = holder_of(deps, &claim).await?;
    let id = match &holder {
        Some(h) => h.clone(),
        None => decoy_account(scope, &email_index).to_string(),
    };
    // The actor's cached state, checked against the log's newest sequence for the
    // account, spares nats-server a consumer for every login; a password changed
    // anywhere is still seen, since the check reads the log itself.
    let account = match cache.get(&id).await {
        Some(c) => refresh::<Account>(&deps.store, scope, &id, c).await,
        None => load_uniform::<Account>(&deps.store, scope, &id).await,
    }
    .map_err(|e| broken("loading an account", e))?;
    let owner = account.state.owner;
    let sealed = holder.as_ref().and(account.state.password_hash.as_ref());
    let ok = password_matches(deps, sealed, password).await?;
    if !(ok && holder.is_some()) {
        cache.remember(&id, account);
        return Err(CommandFailure::invalid_credentials());
    }
    // The session is appended outside the account's lane: the expected-sequence
    // check orders it with the lane's commands, which reload on a conflict.
    let mut state = Some(account);
    let started = start_session(deps, scope, &id, stamp, session, &mut state).await;
    if let Some(s) = state {
        cache.remember(&id, s);
    }
    let (session, seq) = started?;
    Ok(AccountReply::LoggedIn { account_id: id, owner, session, seq })
}

/// Mails a reset link when `email` has an account of this scope, and answers
/// the same when it has none: the answer never tells whether an address is
/// registered. (The append makes the known case a few milliseconds slower; the
/// rate limit per address bounds what that can reveal.)
async fn request_reset(
    ctx: &Ctx,
    stamp: &Stamp,
    email: &Email,
    cache: &Cache<AccountHandler>,
) -> CommandResult<AccountReply> {
    let Ctx { scope, deps, .. } = ctx;
    let (_, claim) = email_claim(deps, scope, email).await?;
    let Some(id) = holder_of(deps, &claim).await? else { return Ok(AccountReply::ResetRequested) };
    let mut state = cache.get(&id).await;
    let challenge = challenge_for(deps, scope, &id, now(), deps.accounts.reset_ttl_secs).await?;
    let cmd = AccountCommand::RequestPasswordReset { challenge };
    let own = stamp.again(CommandId::fresh());
    let done = decide_on_registered(deps, scope, &id, &own, &mut state, |_| Ok(cmd)).await;
    if let Some(s) = state {
        cache.remember(&id, s);
    }
    match done {
        // Infrastructure failed: say so, or the mail would be lost unnoticed.
        Err(f) if f.code == "INTERNAL" => Err(f),
        // An account that is no longer registered gets no mail, like an unknown one.
        _ => Ok(AccountReply::ResetRequested),
    }
}

//! The mail reactor: a durable consumer on `EVENTS` that turns account events
//! and invitations into mails on the `MAIL` queue. Its position lives in NATS (the consumer's
//! acknowledgements), and each mail's queue message id is its event's id, so a
//! crash between the event and the mail loses no mail and a restart queues none
//! twice (the queue drops an id it has seen within its duplicate window).
//!
//! The reactor opens the sealed address and challenge secret of an event with
//! the person's key; an event whose person was erased, or whose challenge has
//! expired, gets no mail.

use actors::domain::access::{ACCESS_ID, Access, AccessEvent, MemberInvited};
use actors::domain::account::{Account, AccountEvent, AccountId, VerificationPurpose};
use actors::domain::aggregate::Aggregate;
use actors::domain::challenge::{Purpose, Secret};
use actors::domain::tenant::{Scope, Tenant};
use actors::domain::webhook::{WEBHOOKS_ID, WebhookDisabled, WebhookEvent, Webhooks};
use actors::store::event_store::{EventStore, EventSubject, Stored, decode, event_of};
use actors::store::seal::{KeyRing, SealError, Sealed, person_key_name};
use actors::tree::executor::load;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::outbound::durable::{self, React, Skip, later};
use crate::outbound::mail::{MailKind, OutgoingMail, TemplateVars, enqueue, render};

/// The durable consumer's name on `EVENTS`.
pub const CONSUMER: &str = "mail-reactor";

/// The events that produce mail.
const FILTERS: [&str; 5] = [
    "evt.*.account.*.EmailVerificationRequested",
    "evt.*.account.*.PasswordResetRequested",
    "evt.*.account.*.PasswordChanged",
    "evt.*.access.tenant.MemberInvited",
    "evt.*.webhook.tenant.WebhookDisabled",
];

impl React for MailReactor {
    fn consumer(&self) -> (&'static str, &'static str, Vec<String>) {
        let filters = FILTERS.iter().map(|s| (*s).to_owned()).collect();
        (CONSUMER, "turns account events and invitations into mails on MAIL", filters)
    }

    async fn react(&self, seq: u64, subject: &str, payload: &[u8]) -> Result<(), Skip> {
        self.mail(self.store.jetstream(), seq, subject, payload).await
    }
}

pub struct MailReactor {
    pub store: EventStore,
    pub keys: KeyRing,
    /// Where the mails' links point, without a trailing slash.
    pub app_url: String,
}

impl MailReactor {
    /// Follows the log until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        durable::run(&self.store, &self, cancel).await
    }

    /// Queues the mail of one event.
    async fn mail(&self, js: &jetstream::Context, seq: u64, subject: &str, payload: &[u8]) -> Result<(), Skip> {
        let stored = decode(seq, payload).map_err(|e| Skip::Never(format!("undecodable event: {e}")))?;
        let at = EventSubject::parse(subject).ok_or_else(|| Skip::Never("not an event subject".into()))?;
        if !at.agrees_with(&stored.envelope) {
            return Err(Skip::Never("the envelope disagrees with its subject".into()));
        }
        let scope = Scope::parse_token(at.tenant).map_err(|_| Skip::Never("not a tenant".into()))?;
        if at.aggregate == <Access as Aggregate>::NAME {
            return match event_of::<Access>(&stored.envelope).map_err(|e| Skip::Never(e.to_string()))? {
                AccessEvent::MemberInvited(e) => queue(js, &stored, &self.invitation(&scope, &e).await?).await,
                _ => Ok(()),
            };
        }
        if at.aggregate == <Webhooks as Aggregate>::NAME {
            return match event_of::<Webhooks>(&stored.envelope).map_err(|e| Skip::Never(e.to_string()))? {
                WebhookEvent::WebhookDisabled(e) => queue(js, &stored, &self.webhook_disabled(&scope, &e).await?).await,
                _ => Ok(()),
            };
        }
        let account = AccountId::parse(at.aggregate_id).map_err(|_| Skip::Never("not an account id".into()))?;
        let kid = person_key_name(&scope, account.as_str());
        let mail = match event_of::<Account>(&stored.envelope).map_err(|e| Skip::Never(e.to_string()))? {
            AccountEvent::EmailVerificationRequested(e) => {
                let link =
                    self.link(&scope, "verify-email", &account, &e.secret, &kid, Purpose::VerifyEmail, e.expires_at);
                let (secret, link) = link.await?;
                let vars = TemplateVars {
                    code: Some(secret.code(Purpose::VerifyEmail).as_str().to_owned()),
                    link: Some(link),
                    expires_in: minutes(e.expires_at - e.requested_at),
                    ..TemplateVars::default()
                };
                let to = self.open_personal(&e.email, &kid).await?;
                if e.purpose == VerificationPurpose::EmailChange {
                    // The current address hears of the change first, under an id
                    // of its own: a notice, with no code and no link.
                    let state = load::<Account>(&self.store, &scope, account.as_str()).await.map_err(later)?.state;
                    if let Some(old) = &state.email {
                        let old = self.open_personal(old, &kid).await?;
                        let notice = self
                            .compose(&scope, &account, &kid, old, MailKind::EmailChangeNotice, TemplateVars::default())
                            .await?;
                        enqueue(js, &format!("{}.notice", stored.envelope.id), &notice).await.map_err(later)?;
                    }
                    self.compose(&scope, &account, &kid, to, MailKind::VerifyNewEmail, vars).await?
                } else {
                    self.compose(&scope, &account, &kid, to, MailKind::VerifyEmail, vars).await?
                }
            }
            AccountEvent::PasswordResetRequested(e) => {
                let link = self.link(
                    &scope,
                    "reset-password",
                    &account,
                    &e.secret,
                    &kid,
                    Purpose::ResetPassword,
                    e.expires_at,
                );
                let (_, link) = link.await?;
                let vars = TemplateVars {
                    link: Some(link),
                    expires_in: minutes(e.expires_at - e.requested_at),
                    ..TemplateVars::default()
                };
                let to = self.open_personal(&e.email, &kid).await?;
                self.compose(&scope, &account, &kid, to, MailKind::PasswordReset, vars).await?
            }
            AccountEvent::PasswordChanged(_) => {
                // A notice to the account's address: whoever did not change it learns in time.
                let state = load::<Account>(&self.store, &scope, account.as_str()).await.map_err(later)?.state;
                let Some(email) = &state.email else { return Err(Skip::Never("the account is not registered".into())) };
                let to = self.open_personal(email, &kid).await?;
                self.compose(&scope, &account, &kid, to, MailKind::PasswordChanged, TemplateVars::default()).await?
            }
            _ => return Ok(()),
        };
        queue(js, &stored, &mail).await
    }

    /// The mail to a webhook's owner that their webhook was disabled for its
    /// failures (one a member disabled gets none).
    async fn webhook_disabled(&self, scope: &Scope, e: &WebhookDisabled) -> Result<OutgoingMail, Skip> {
        if e.failures == 0 {
            return Err(Skip::Never("disabled by a member".into()));
        }
        let owner = e.owner.as_deref().ok_or_else(|| Skip::Never("the webhook has no owner".into()))?;
        let owner = AccountId::parse(owner).map_err(|_| Skip::Never("not an account id".into()))?;
        let kid = person_key_name(scope, owner.as_str());
        let state = load::<Account>(&self.store, scope, owner.as_str()).await.map_err(later)?.state;
        let Some(email) = &state.email else { return Err(Skip::Never("the owner is not registered".into())) };
        let to = self.open_personal(email, &kid).await?;
        let webhooks = load::<Webhooks>(&self.store, scope, WEBHOOKS_ID).await.map_err(later)?.state;
        let webhook = match webhooks.webhooks.get(&e.webhook_id) {
            Some(w) => format!("{} ({})", w.name, w.url),
            None => e.webhook_id.clone(),
        };
        let vars = TemplateVars { webhook: Some(webhook), reason: Some(e.reason.clone()), ..TemplateVars::default() };
        self.compose(scope, &owner, &kid, to, MailKind::WebhookDisabled, vars).await
    }

    /// The invitation mail: to the invited address, in the inviter's language,
    /// naming the inviter, the role and the tenant.
    async fn invitation(&self, scope: &Scope, e: &MemberInvited) -> Result<OutgoingMail, Skip> {
        let invitation = AccountId::parse(&e.invitation_id).map_err(|_| Skip::Never("not an invitation id".into()))?;
        let kid = person_key_name(scope, invitation.as_str());
        let (_, link) = self
            .link(scope, "accept-invitation", &invitation, &e.secret, &kid, Purpose::Invitation, e.expires_at)
            .await?;
        let inviter = AccountId::parse(&e.invited_by).map_err(|_| Skip::Never("not an account id".into()))?;
        let inviter_kid = person_key_name(scope, inviter.as_str());
        let inviter = Person::of(self, scope, &inviter, &inviter_kid).await?;
        let access = load::<Access>(&self.store, scope, ACCESS_ID).await.map_err(later)?.state;
        let role = access.roles.get(&e.role).map_or_else(|| e.role.clone(), |r| r.name.clone());
        let vars = TemplateVars {
            tenant_name: tenant_name(&self.store, scope).await?,
            link: Some(link),
            expires_in: minutes(e.expires_at - e.invited_at),
            inviter: Some(inviter.firstname),
            role: Some(role),
            ..TemplateVars::default()
        };
        let to = self.open_personal(&e.email, &kid).await?;
        let rendered = render(MailKind::Invitation, &e.locale, &vars).map_err(later)?;
        Ok(OutgoingMail::new(to, None, scope, MailKind::Invitation, rendered))
    }

    /// Opens a challenge's secret and builds its link; an expired challenge
    /// gets no mail.
    #[allow(clippy::too_many_arguments)]
    async fn link(
        &self,
        scope: &Scope,
        path: &str,
        account: &AccountId,
        sealed: &Sealed,
        kid: &str,
        purpose: Purpose,
        expires_at: i64,
    ) -> Result<(Secret, String), Skip> {
        if time::OffsetDateTime::now_utc().unix_timestamp() > expires_at {
            return Err(Skip::Never("the challenge has expired".into()));
        }
        let secret = Secret::from_bytes(&self.open(sealed, kid).await?)
            .ok_or_else(|| Skip::Never("the challenge secret has the wrong length".into()))?;
        let token = secret.link_token(purpose, account);
        let link = format!("{}/t/{}/{path}?token={}", self.app_url, scope.token(), token.expose());
        Ok((secret, link))
    }

    /// Renders a mail of `kind` to `to` in the account's locale, with the
    /// tenant's name and the person's first name filled in.
    async fn compose(
        &self,
        scope: &Scope,
        account: &AccountId,
        kid: &str,
        to: String,
        kind: MailKind,
        mut vars: TemplateVars,
    ) -> Result<OutgoingMail, Skip> {
        let person = Person::of(self, scope, account, kid).await?;
        vars.tenant_name = tenant_name(&self.store, scope).await?;
        vars.first_name = person.firstname.clone();
        let rendered = render(kind, &person.locale, &vars).map_err(later)?;
        Ok(OutgoingMail::new(to, Some(person.firstname), scope, kind, rendered))
    }

    /// Opens a value sealed under `kid`, refusing any other key: an event names
    /// its key, and one person's event must never open another's data.
    async fn open(&self, sealed: &Sealed, kid: &str) -> Result<Vec<u8>, Skip> {
        if sealed.kid != kid {
            return Err(Skip::Never("a sealed field names another person's key".into()));
        }
        self.keys.open(sealed).await.map_err(|e| match e {
            SealError::MissingKey(_) | SealError::Shredded(_) => Skip::Never("the person was erased".into()),
            SealError::Open => Skip::Never("a sealed field does not open".into()),
            other => later(other),
        })
    }

    async fn open_personal(&self, sealed: &Sealed, kid: &str) -> Result<String, Skip> {
        String::from_utf8(self.open(sealed, kid).await?).map_err(|_| Skip::Never("a sealed text is not UTF-8".into()))
    }
}

/// Seconds as whole minutes, for "valid for N minutes".
fn minutes(secs: i64) -> u32 {
    u32::try_from(secs.max(0) / 60).unwrap_or(u32::MAX)
}

/// What a mail says about its recipient, from the account as the log has it.
struct Person {
    firstname: String,
    locale: String,
}

impl Person {
    async fn of(r: &MailReactor, scope: &Scope, account: &AccountId, kid: &str) -> Result<Self, Skip> {
        let state = load::<Account>(&r.store, scope, account.as_str()).await.map_err(later)?.state;
        let firstname = match &state.firstname {
            Some(sealed) => r.open_personal(sealed, kid).await?,
            None => return Err(Skip::Never("the account is not registered".into())),
        };
        Ok(Self { firstname, locale: state.locale.unwrap_or_default() })
    }
}

/// The tenant's display name, from the directory in the log (the read model
/// may not have it yet: a tenant's owner is mailed in the same breath as the
/// tenant is created).
async fn tenant_name(store: &EventStore, scope: &Scope) -> Result<String, Skip> {
    match scope {
        Scope::Platform => Ok("Canopy".into()),
        Scope::Tenant(slug) => {
            let state = load::<Tenant>(store, &Scope::Platform, slug.as_str()).await.map_err(later)?.state;
            Ok(state.name.map_or_else(|| slug.as_str().to_owned(), |n| n.as_str().to_owned()))
        }
    }
}

/// Queues `mail` under its event's id: a second offer of the same event is
/// dropped by the queue.
async fn queue(js: &jetstream::Context, event: &Stored, mail: &OutgoingMail) -> Result<(), Skip> {
    enqueue(js, &event.envelope.id, mail).await.map(|_| ()).map_err(later)
}

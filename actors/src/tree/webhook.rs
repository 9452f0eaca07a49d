//! The webhooks handler: a tenant's webhooks on their one `tenant` lane. A
//! member or token holding `manage_webhooks` creates, changes, rotates,
//! deletes and redelivers; only a node disables a webhook for its failures.
//! Secrets are made and sealed here: the `whsec_` signing secret (32 random
//! bytes, shown once) and the endpoint's credentials, under the tenant's key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::command::{
    CommandEnvelope, CommandFailure, CommandResult, Principal, WebhookAuthInput, WebhookReply, WebhookRequest,
};
use crate::domain::ids::derived_uuid;
use crate::domain::tenant::Scope;
use crate::domain::webhook::{
    AuthKind, Changes, WEBHOOKS_ID, WebhookAuth, WebhookCommand, WebhookError, Webhooks, check_credential,
    parse_event_types, parse_header, parse_name, parse_url,
};
use crate::store::seal::{Sealed, tenant_key_name};
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::directory::insider_may_cached;
use crate::tree::executor::{Loaded, execute};

pub struct WebhookHandler;

pub type WebhookActor = AggregateActor<WebhookHandler>;
pub type WebhookMsg = AggregateMsg<WebhookHandler>;

/// The permission to create, change, delete and redeliver webhooks.
pub const MANAGE_WEBHOOKS: &str = "manage_webhooks";
/// The prefix of a Standard Webhooks signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in standard base64.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

impl Handler for WebhookHandler {
    type Aggregate = Webhooks;
    type Request = WebhookRequest;
    type Reply = WebhookReply;
    const NAME: &'static str = "WebhookActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<WebhookRequest>) -> CommandResult<Route> {
        let allowed = match envelope.request {
            WebhookRequest::Disable { .. } => matches!(envelope.principal, Principal::Node),
            _ => envelope.principal.actor_in(scope).is_some(),
        };
        if !allowed {
            return Err(CommandFailure::forbidden("only a member or access token of this tenant may change webhooks"));
        }
        Ok(Route::Lane(WEBHOOKS_ID.to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<WebhookRequest>,
        state: &mut Option<Loaded<Webhooks>>,
    ) -> CommandResult<WebhookReply> {
        let Ctx { scope, deps, link } = ctx;
        let owner = match envelope.request {
            WebhookRequest::Disable { .. } => None,
            _ => insider_may_cached(deps, scope, link, &envelope.principal, MANAGE_WEBHOOKS).await?,
        };
        let stamp = stamp_for(deps, scope, &envelope).await?;
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        let invalid = |e: WebhookError| CommandFailure::rejected(&e);
        let mut secret = None;
        let (webhook_id, cmd) = match envelope.request {
            WebhookRequest::Create { name, url, method, event_types, auth } => {
                let webhook_id = derived_uuid(&format!("{scope}/webhook/{}", stamp.command_id));
                let name = parse_name(&name).map_err(invalid)?;
                parse_url(&url).map_err(|e| invalid(WebhookError::InvalidUrl(e)))?;
                let event_types = parse_event_types(&event_types, crate::contract::event_types()).map_err(invalid)?;
                let auth = seal_auth(deps, scope, auth).await?;
                let fresh = new_secret();
                let sealed = seal(deps, scope, fresh.as_bytes()).await?;
                secret = Some(fresh);
                let cmd = WebhookCommand::Create {
                    webhook_id: webhook_id.clone(),
                    name,
                    url,
                    method,
                    event_types,
                    auth,
                    secret: sealed,
                    owner,
                    at,
                };
                (webhook_id, cmd)
            }
            WebhookRequest::Update { webhook_id, name, url, method, event_types, auth, enabled } => {
                if let Some(url) = &url {
                    parse_url(url).map_err(|e| invalid(WebhookError::InvalidUrl(e)))?;
                }
                let event_types = event_types
                    .map(|t| parse_event_types(&t, crate::contract::event_types()))
                    .transpose()
                    .map_err(invalid)?;
                let auth = match auth {
                    Some(a) => Some(seal_auth(deps, scope, a).await?),
                    None => None,
                };
                let name = name.map(|n| parse_name(&n)).transpose().map_err(invalid)?;
                let changes = Changes { name, url, method, event_types, auth, enabled };
                (webhook_id.clone(), WebhookCommand::Update { webhook_id, changes, at })
            }
            WebhookRequest::Delete { webhook_id } => (webhook_id.clone(), WebhookCommand::Delete { webhook_id, at }),
            WebhookRequest::RotateSecret { webhook_id, overlap_secs } => {
                let fresh = new_secret();
                let sealed = seal(deps, scope, fresh.as_bytes()).await?;
                secret = Some(fresh);
                let cmd =
                    WebhookCommand::RotateSecret { webhook_id: webhook_id.clone(), secret: sealed, overlap_secs, at };
                (webhook_id, cmd)
            }
            WebhookRequest::Disable { webhook_id, reason, failures } => {
                (webhook_id.clone(), WebhookCommand::Disable { webhook_id, reason, failures, at })
            }
            WebhookRequest::Redeliver { webhook_id, delivery_id, event_seq } => {
                (webhook_id.clone(), WebhookCommand::Redeliver { webhook_id, delivery_id, event_seq, at })
            }
        };
        let done =
            execute::<Webhooks>(&deps.store, scope, WEBHOOKS_ID, state.take(), &stamp, &cmd, deps.snapshot_every)
                .await
                .map_err(|e| failure(e, "appending a webhook change"))?;
        *state = Some(done.loaded);
        // A retry finds what the first try made, whose secret was shown then
        // and is kept nowhere in clear.
        Ok(WebhookReply { webhook_id, secret: secret.filter(|_| !done.replayed), seq: done.seq })
    }
}

/// `plaintext` sealed under the tenant's key.
async fn seal(deps: &Deps, scope: &Scope, plaintext: &[u8]) -> CommandResult<Sealed> {
    let kid = tenant_key_name(scope);
    let key = deps.keys.key(&kid).await.map_err(|e| broken("reading the tenant's key", e))?;
    Ok(key.seal(&kid, plaintext))
}

/// Parses a request's authentication and seals its credentials.
async fn seal_auth(deps: &Deps, scope: &Scope, auth: WebhookAuthInput) -> CommandResult<WebhookAuth> {
    let invalid = |e: WebhookError| CommandFailure::rejected(&e);
    let (kind, header, credentials) = match auth {
        WebhookAuthInput::None => return Ok(WebhookAuth::default()),
        WebhookAuthInput::Basic { username, password } => {
            check_credential("the username", &username).map_err(invalid)?;
            if username.contains(':') {
                return Err(invalid(WebhookError::InvalidAuth("a basic username has no `:`".into())));
            }
            check_credential("the password", &password).map_err(invalid)?;
            (AuthKind::Basic, None, serde_json::json!({ "username": username, "password": password }))
        }
        WebhookAuthInput::ApiKey { header, value } => {
            let header = parse_header(&header).map_err(invalid)?;
            check_credential("the API key", &value).map_err(invalid)?;
            (AuthKind::ApiKey, Some(header), serde_json::json!({ "value": value }))
        }
        WebhookAuthInput::Bearer { token } => {
            check_credential("the token", &token).map_err(invalid)?;
            (AuthKind::Bearer, None, serde_json::json!({ "token": token }))
        }
    };
    let sealed = seal(deps, scope, credentials.to_string().as_bytes()).await?;
    Ok(WebhookAuth { kind, header, credentials: Some(sealed) })
}

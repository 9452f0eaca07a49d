//! The push handler: a message is published on a lane of its own (its id is
//! derived from the command's, so a retry finds it), sealed under the tenant's
//! key; the tenant's forwarding choice is the one `settings` lane. Each
//! request is checked against the caller's permissions here, whoever sends
//! it to `cmd.{tenant}.push`. The push reactor sends what was appended.

use crate::command::{CommandEnvelope, CommandFailure, CommandResult, PushReply, PushRequest};
use crate::domain::ids::derived_uuid;
use crate::domain::push::{MAX_PAYLOAD, Push, PushCommand, SETTINGS_ID, Topic};
use crate::domain::tenant::Scope;
use crate::store::seal::tenant_key_name;
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::broken;
use crate::tree::directory::insider_may_cached;
use crate::tree::executor::{Loaded, execute};

pub struct PushHandler;

pub type PushActor = AggregateActor<PushHandler>;
pub type PushMsg = AggregateMsg<PushHandler>;

/// The permission to publish messages.
pub const PUBLISH_MESSAGES: &str = "publish_messages";
/// The permission to choose the forwarded event types.
pub const MANAGE_PUSH: &str = "manage_push";

/// A message's id: derived from its command's id, so a retry publishes once.
pub fn message_id(scope: &Scope, command_id: &str) -> String {
    derived_uuid(&format!("{scope}/push/{command_id}"))
}

impl Handler for PushHandler {
    type Aggregate = Push;
    type Request = PushRequest;
    type Reply = PushReply;
    const NAME: &'static str = "PushActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<PushRequest>) -> CommandResult<Route> {
        if envelope.principal.actor_in(scope).is_none() {
            return Err(CommandFailure::forbidden("only a member or access token of this tenant may push"));
        }
        Ok(Route::Lane(match envelope.request {
            PushRequest::Publish { .. } => message_id(scope, envelope.command_id.as_str()),
            PushRequest::SetForwarding { .. } => SETTINGS_ID.to_owned(),
        }))
    }

    async fn run(
        ctx: &Ctx,
        id: &str,
        envelope: CommandEnvelope<PushRequest>,
        state: &mut Option<Loaded<Push>>,
    ) -> CommandResult<PushReply> {
        let Ctx { scope, deps, link } = ctx;
        let permission = match envelope.request {
            PushRequest::Publish { .. } => PUBLISH_MESSAGES,
            PushRequest::SetForwarding { .. } => MANAGE_PUSH,
        };
        insider_may_cached(deps, scope, link, &envelope.principal, permission).await?;
        let stamp = stamp_for(deps, scope, &envelope).await?;
        let invalid = |e: crate::domain::push::PushError| CommandFailure::rejected(&e);
        let cmd = match &envelope.request {
            PushRequest::Publish { topic, payload, retain } => {
                let topic = Topic::for_message(topic).map_err(invalid)?;
                // Refused before it is sealed; `decide` checks again.
                if payload.len() > MAX_PAYLOAD {
                    return Err(invalid(crate::domain::push::PushError::PayloadTooLarge));
                }
                let kid = tenant_key_name(scope);
                let key = deps.keys.key(&kid).await.map_err(|e| broken("reading the tenant's key", e))?;
                let sealed = serde_json::to_value(key.seal(&kid, payload.as_bytes()))
                    .map_err(|e| broken("sealing a push payload", e))?;
                let at = time::OffsetDateTime::now_utc().unix_timestamp();
                PushCommand::Publish { topic, payload: sealed, size: payload.len(), at, retain: *retain }
            }
            PushRequest::SetForwarding { types } => PushCommand::SetForwarding {
                types: types.iter().cloned().collect(),
                known: crate::contract::event_types().clone(),
            },
        };
        let done = execute::<Push>(&deps.store, scope, id, state.take(), &stamp, &cmd, deps.snapshot_every)
            .await
            .map_err(|e| failure(e, "appending a push"))?;
        let forwarded = done.loaded.state.forwarded.iter().cloned().collect();
        let published = done.loaded.state.published;
        let seq = done.seq;
        // A message's lane is used once: nothing of it is worth keeping cached.
        if !published {
            *state = Some(done.loaded);
        }
        Ok(PushReply { message_id: published.then(|| id.to_owned()), forwarded, seq })
    }
}

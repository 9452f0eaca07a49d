//! The backups handler: a tenant's backups on its one `backups` lane. A
//! backup is checked against the day's limit first, then written to the
//! object store `backups` (`store::backup`), then recorded; a backup past the
//! total removes the oldest, whose object goes after the append. Limits are
//! set by a platform administrator.

use crate::command::{BackupReply, BackupRequest, CommandEnvelope, CommandFailure, CommandResult};
use crate::domain::aggregate::Aggregate;
use crate::domain::backup::{BACKUPS_ID, BackupCommand, BackupEvent, BackupTaken, Backups};
use crate::domain::ids::derived_uuid;
use crate::domain::tenant::Scope;
use crate::store::backup;
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::broken;
use crate::tree::directory::insider_may;
use crate::tree::executor::{Loaded, execute, load};

pub struct BackupHandler;

pub type BackupActor = AggregateActor<BackupHandler>;
pub type BackupMsg = AggregateMsg<BackupHandler>;

/// The permission a member or token needs to take backups.
pub const MANAGE_BACKUPS: &str = "manage_backups";

impl Handler for BackupHandler {
    type Aggregate = Backups;
    type Request = BackupRequest;
    type Reply = BackupReply;
    const NAME: &'static str = "BackupActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<BackupRequest>) -> CommandResult<Route> {
        let admin = envelope.principal.is_platform_admin();
        let allowed = match envelope.request {
            BackupRequest::Take => admin || envelope.principal.actor_in(scope).is_some(),
            BackupRequest::SetLimits { .. } => admin,
        };
        if !allowed {
            return Err(CommandFailure::forbidden("only a platform administrator may do this"));
        }
        Ok(Route::Lane(BACKUPS_ID.to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<BackupRequest>,
        state: &mut Option<Loaded<Backups>>,
    ) -> CommandResult<BackupReply> {
        let Ctx { scope, deps, .. } = ctx;
        if !envelope.principal.is_platform_admin() {
            insider_may(deps, scope, &envelope.principal, MANAGE_BACKUPS).await?;
        }
        let stamp = stamp_for(deps, scope, &envelope).await?;
        if state.is_none() {
            *state =
                Some(load::<Backups>(&deps.store, scope, BACKUPS_ID).await.map_err(|e| broken("loading backups", e))?);
        }
        let current = state.as_ref().expect("loaded above").state.clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cmd = match envelope.request {
            BackupRequest::SetLimits { per_day, max } => BackupCommand::SetLimits { per_day, max },
            BackupRequest::Take => {
                // Refused before anything is written.
                Backups::decide(&current, &BackupCommand::Check { now }).map_err(|e| CommandFailure::rejected(&e))?;
                let tenant =
                    scope.tenant().ok_or_else(|| CommandFailure::new("BAD_USER_INPUT", "backups are of tenants"))?;
                // Boxed: the object store's futures are large.
                let exported = Box::pin(backup::export(&deps.store, &deps.keys, tenant))
                    .await
                    .map_err(|e| broken("exporting a tenant", e))?;
                // Derived from the command, so a retry writes over its own object.
                let backup_id = derived_uuid(&format!("{scope}/backup/{}", stamp.command_id));
                let bucket = backup::ensure_bucket(deps.store.jetstream(), 1)
                    .await
                    .map_err(|e| broken("opening the backups", e))?;
                let size = Box::pin(backup::put(&bucket, &backup_id, exported.bytes))
                    .await
                    .map_err(|e| broken("writing a backup", e))?;
                BackupCommand::Take(BackupTaken {
                    backup_id,
                    at: now,
                    size,
                    events: exported.events,
                    last_seq: exported.last_seq,
                })
            }
        };
        let done = Box::pin(execute::<Backups>(
            &deps.store,
            scope,
            BACKUPS_ID,
            state.take(),
            &stamp,
            &cmd,
            deps.snapshot_every,
        ))
        .await;
        let bucket =
            backup::ensure_bucket(deps.store.jetstream(), 1).await.map_err(|e| broken("opening the backups", e))?;
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // The backup written for a refused command is not kept.
                if let BackupCommand::Take(t) = &cmd {
                    let _ = backup::remove(&bucket, &t.backup_id).await;
                }
                return Err(failure(e, "appending a backup"));
            }
        };
        for event in &done.events {
            if let BackupEvent::BackupRemoved(r) = event {
                backup::remove(&bucket, &r.backup_id).await.map_err(|e| broken("removing an old backup", e))?;
            }
        }
        let after = done.loaded.state.clone();
        *state = Some(done.loaded);
        let (backup_id, size, at) = match cmd {
            BackupCommand::Take(t) => (Some(t.backup_id), t.size, t.at),
            _ => (None, 0, now),
        };
        Ok(BackupReply { backup_id, size, at, per_day: after.per_day, max: after.max, seq: done.seq })
    }
}

//! The directory handler: the platform tree's aggregate actor for tenants. A
//! tenant and its owner account are appended as one atomic batch, so there is
//! never a tenant without an owner, nor an owner without a tenant. Creations of
//! one slug run in its lane; creations of different slugs run at once.

use crate::command::{CommandEnvelope, CommandFailure, CommandResult, Principal, TenantReply, TenantRequest};
use crate::domain::access::{ACCESS_ID, Access, AccessCommand, AccessState};
use crate::domain::account::{Account, AccountCommand};
use crate::domain::aggregate::Aggregate;
use crate::domain::backup::{BACKUPS_ID, Backups};
use crate::domain::tenant::{Scope, Tenant, TenantCommand, TenantCreated, TenantError, TenantId, TenantState};
use crate::store::event_store::{EventStore, Stamp, StoreErrorKind, batch_for, event_subject};
use crate::store::seal::{KeyRing, person_key_name, tenant_key_name};
use crate::tree::account::{NewAccount, account_id_for, check_password, failure, prepare_registration, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::executor::{Loaded, execute, load, refresh};

/// Tenants, in the platform's tree.
pub struct DirectoryHandler;

pub type DirectoryActor = AggregateActor<DirectoryHandler>;
pub type DirectoryMsg = AggregateMsg<DirectoryHandler>;

impl Handler for DirectoryHandler {
    type Aggregate = Tenant;
    type Request = TenantRequest;
    type Reply = TenantReply;
    const NAME: &'static str = "DirectoryActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<TenantRequest>) -> CommandResult<Route> {
        if *scope != Scope::Platform {
            return Err(CommandFailure::new("NOT_FOUND", "tenants are created on the platform"));
        }
        // Checked here too, not only at the edge: whoever reaches `cmd._system.tenant`.
        // A tenant's own callers are checked against its access state in `run`.
        let slug = envelope.request.slug();
        let admin = envelope.principal.is_platform_admin();
        let insider = envelope.principal.actor_in(&Scope::Tenant(slug.clone())).is_some();
        let allowed = match &envelope.request {
            TenantRequest::Create { .. }
            | TenantRequest::Suspend { .. }
            | TenantRequest::Resume { .. }
            | TenantRequest::Restore { .. } => admin,
            TenantRequest::Rename { .. } | TenantRequest::Delete { .. } => admin || insider,
        };
        if !allowed {
            return Err(CommandFailure::forbidden("only a platform administrator may do this"));
        }
        Ok(Route::Lane(slug.as_str().to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<TenantRequest>,
        _state: &mut Option<Loaded<Tenant>>,
    ) -> CommandResult<TenantReply> {
        // Every command reads the directory's subject itself rather than a cached
        // state: two nodes may race on one slug (the expected sequence lets one
        // win), and lifecycle changes are rare.
        if let TenantRequest::Create { .. } = envelope.request {
            return create(&ctx.deps, envelope).await;
        }
        if let TenantRequest::Restore { .. } = envelope.request {
            // Boxed: a restore's futures (object store, key ring, appends) are large.
            return Box::pin(restore(&ctx.deps, envelope)).await;
        }
        change(&ctx.deps, envelope).await
    }
}

/// A lifecycle change of an existing tenant: rename, suspend, resume, delete.
async fn change(deps: &Deps, envelope: CommandEnvelope<TenantRequest>) -> CommandResult<TenantReply> {
    let stamp = stamp_for(deps, &Scope::Platform, &envelope).await?;
    let CommandEnvelope { request, principal, .. } = envelope;
    let tenant = Scope::Tenant(request.slug().clone());
    let cmd = match request {
        TenantRequest::Create { .. } | TenantRequest::Restore { .. } => return Err(CommandFailure::internal()),
        TenantRequest::Rename { name, .. } => {
            if !principal.is_platform_admin() {
                insider_may(deps, &tenant, &principal, "update_tenant").await?;
            }
            TenantCommand::Rename { name }
        }
        TenantRequest::Suspend { .. } => TenantCommand::Suspend,
        TenantRequest::Resume { .. } => TenantCommand::Resume,
        TenantRequest::Delete { password, .. } => {
            if !principal.is_platform_admin() {
                insider_may(deps, &tenant, &principal, "delete_tenant").await?;
                // Only a member can prove a password; a token never deletes its tenant.
                let account = principal
                    .account_in(&tenant)
                    .ok_or_else(|| CommandFailure::forbidden("deleting a tenant needs a member's password"))?;
                let password =
                    password.ok_or_else(|| CommandFailure::new("BAD_USER_INPUT", "the password is not correct"))?;
                check_password(deps, &tenant, account.as_str(), &password, &mut None).await?;
            }
            TenantCommand::Delete
        }
    };
    let slug = tenant.tenant().expect("a tenant scope").as_str().to_owned();
    let done = execute::<Tenant>(&deps.store, &Scope::Platform, &slug, None, &stamp, &cmd, deps.snapshot_every)
        .await
        .map_err(|e| failure(e, "appending a tenant change"))?;
    if let TenantCommand::Delete = cmd {
        // After the append, so a tenant is never left alive without its keys; a
        // retry of the command, and every node's tenant feed, repeat this.
        shred_tenant(&deps.keys, &deps.store, &tenant).await?;
    }
    Ok(TenantReply::Changed { seq: done.seq })
}

/// Whether a member or token of `tenant` holds `permission` there now.
pub(crate) async fn insider_may(
    deps: &Deps,
    tenant: &Scope,
    principal: &Principal,
    permission: &str,
) -> Result<(), CommandFailure> {
    let actor = principal.actor_in(tenant).ok_or_else(|| CommandFailure::forbidden("sign in first"))?;
    let access = load::<Access>(&deps.store, tenant, ACCESS_ID).await.map_err(|e| broken("loading access", e))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if access.state.effective(&actor, now).contains(permission) {
        Ok(())
    } else {
        Err(CommandFailure::forbidden(&format!("this needs the permission {permission}")))
    }
}

/// Whether `principal` holds `permission` in the tenant now: the access state
/// the actor last read, refreshed (one point read; a load only when it moved).
/// Allowed, it answers the account behind the principal (itself, or a token's
/// creator).
pub(crate) async fn insider_may_cached(
    deps: &Deps,
    scope: &Scope,
    link: &crate::tree::aggregate_actor::TreeLink,
    principal: &crate::command::Principal,
    permission: &str,
) -> CommandResult<Option<String>> {
    let actor = principal.actor_in(scope).ok_or_else(|| CommandFailure::forbidden("sign in first"))?;
    let cached = link.access.lock().unwrap_or_else(|e| e.into_inner()).take();
    let loaded = match cached {
        Some(c) => refresh::<Access>(&deps.store, scope, ACCESS_ID, c).await,
        None => load::<Access>(&deps.store, scope, ACCESS_ID).await,
    }
    .map_err(|e| broken("loading access", e))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let allowed = loaded.state.effective(&actor, now).contains(permission);
    let behind = loaded.state.account_behind(&actor, now);
    *link.access.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
    if allowed {
        Ok(behind)
    } else {
        Err(CommandFailure::forbidden(&format!("this needs the permission {permission}")))
    }
}

/// Makes a deleted tenant's sealed data unreadable for good: its persons' keys
/// are destroyed, its snapshots purged, and last its data key is shredded
/// (never created again). A shredded data key therefore means all of it is
/// done, so a repetition (each node's feed replays every deletion at start)
/// costs one read.
pub async fn shred_tenant(keys: &KeyRing, store: &EventStore, tenant: &Scope) -> Result<(), CommandFailure> {
    let kid = tenant_key_name(tenant);
    if keys.is_shredded(&kid).await.map_err(|e| broken("reading a tenant key", e))? {
        return Ok(());
    }
    keys.destroy_all(&person_key_name(tenant, "")).await.map_err(|e| broken("destroying a tenant's person keys", e))?;
    // Its backups hold its keys too: they go with it. (Boxed: the object
    // store's futures are large, and this runs inside the actors' tasks.)
    Box::pin(remove_backups(store, tenant)).await?;
    store.forget_snapshots(tenant).await.map_err(|e| broken("purging a tenant's snapshots", e))?;
    keys.shred(&kid).await.map_err(|e| broken("shredding a tenant key", e))
}

/// Removes the objects of every backup a tenant holds.
async fn remove_backups(store: &EventStore, tenant: &Scope) -> Result<(), CommandFailure> {
    let held = load::<Backups>(store, tenant, BACKUPS_ID).await.map_err(|e| broken("reading a tenant's backups", e))?;
    if held.state.held.is_empty() {
        return Ok(());
    }
    let bucket = crate::store::backup::ensure_bucket(store.jetstream(), 1)
        .await
        .map_err(|e| broken("opening the backups", e))?;
    for h in &held.state.held {
        crate::store::backup::remove(&bucket, &h.backup_id).await.map_err(|e| broken("removing a backup", e))?;
    }
    Ok(())
}

/// The subject of a tenant's creation event: its existence check.
pub fn tenant_created_subject(slug: &TenantId) -> String {
    event_subject(&Scope::Platform, Tenant::NAME, slug.as_str(), "TenantCreated")
}

/// What an existing tenant means for a creation: the same command seen again
/// (answered as before, if it is the same request), or a taken slug.
async fn existing(
    deps: &Deps,
    slug: &TenantId,
    stamp: &Stamp,
) -> Result<Option<CommandResult<TenantReply>>, CommandFailure> {
    let found = deps
        .store
        .last_on_subject(&tenant_created_subject(slug))
        .await
        .map_err(|e| broken("reading the tenant directory", e))?;
    Ok(found.map(|s| {
        if s.envelope.command_id == stamp.command_id.as_str() {
            if s.envelope.request_digest != stamp.digest {
                return Err(CommandFailure::reused_id());
            }
            let created: Result<TenantCreated, _> = serde_json::from_value(s.envelope.data);
            match created {
                Ok(c) => Ok(TenantReply::Created { slug: c.slug, owner_account_id: c.owner_account_id, seq: s.seq }),
                Err(e) => Err(broken("decoding TenantCreated", e)),
            }
        } else {
            Err(CommandFailure::rejected(&TenantError::AlreadyExists))
        }
    }))
}

async fn create(deps: &Deps, envelope: CommandEnvelope<TenantRequest>) -> CommandResult<TenantReply> {
    let stamp = stamp_for(deps, &Scope::Platform, &envelope).await?;
    let CommandEnvelope { request, .. } = envelope;
    let TenantRequest::Create { slug, name, owner_email, owner_password } = request else {
        return Err(CommandFailure::internal());
    };
    if let Some(answer) = existing(deps, &slug, &stamp).await? {
        return answer;
    }
    let scope = Scope::Tenant(slug.clone());
    let owner_id = account_id_for(&scope, &stamp.command_id);
    let registration = prepare_registration(
        deps,
        &scope,
        &NewAccount {
            account_id: owner_id.clone(),
            email: owner_email,
            password: owner_password,
            firstname: crate::domain::account::PersonName::parse("Owner").expect("a constant name parses"),
            lastname: crate::domain::account::PersonName::parse(slug.as_str()).expect("a slug is a valid name"),
            owner: true,
            locale: Default::default(),
            invitation: None,
        },
    )
    .await?;
    let tenant_cmd =
        TenantCommand::Create { slug: slug.clone(), name, owner_account_id: owner_id.to_string(), restored_from: None };
    let tenant = Tenant::decide(&TenantState::default(), &tenant_cmd).map_err(|e| CommandFailure::rejected(&e))?;
    let owner = Account::decide(&Default::default(), &AccountCommand::Register(Box::new(registration)))
        .map_err(|e| CommandFailure::rejected(&e))?;
    let mut batch = batch_for::<Tenant>(&Scope::Platform, slug.as_str(), 0, &stamp, &tenant.events, &[])
        .map_err(|e| broken("building the tenant batch", e))?;
    batch.extend(
        batch_for::<Account>(&scope, owner_id.as_str(), 0, &stamp, &owner.events, &owner.reservations)
            .map_err(|e| broken("building the owner batch", e))?,
    );
    // The tenant's access control starts with its creator as owner, in the same batch.
    let access =
        Access::decide(&AccessState::default(), &AccessCommand::Establish { owner_account_id: owner_id.to_string() })
            .map_err(|e| CommandFailure::rejected(&e))?;
    batch.extend(
        batch_for::<Access>(&scope, ACCESS_ID, 0, &stamp, &access.events, &[])
            .map_err(|e| broken("building the access batch", e))?,
    );
    match deps.store.append(&stamp.command_id, batch).await {
        Ok(appended) if appended.duplicate => match existing(deps, &slug, &stamp).await? {
            Some(answer) => answer,
            None => Err(CommandFailure::conflict()),
        },
        Ok(appended) => {
            Ok(TenantReply::Created { slug, owner_account_id: owner_id.to_string(), seq: appended.last_seq })
        }
        Err(e) if e.kind() == StoreErrorKind::Conflict => match existing(deps, &slug, &stamp).await? {
            Some(answer) => answer,
            None => Err(CommandFailure::conflict()),
        },
        Err(e) => Err(broken("appending a tenant", e)),
    }
}

/// A new tenant cloned from a backup (`store::backup`): the backup's events
/// appended under the new slug, then its `TenantCreated`, so the tenant
/// exists only once all of it is there. A person erased since the backup
/// stays erased (their key is gone, and is not brought back), and a backup of
/// a deleted tenant is not restored.
async fn restore(deps: &Deps, envelope: CommandEnvelope<TenantRequest>) -> CommandResult<TenantReply> {
    use crate::store::backup;
    let stamp = stamp_for(deps, &Scope::Platform, &envelope).await?;
    let TenantRequest::Restore { slug, backup_id } = envelope.request else {
        return Err(CommandFailure::internal());
    };
    if let Some(answer) = existing(deps, &slug, &stamp).await? {
        return answer;
    }
    let target = Scope::Tenant(slug.clone());
    let started = deps
        .store
        .last_seq_on(&crate::store::event_store::scope_filter(&target))
        .await
        .map_err(|e| broken("reading a slug's events", e))?;
    let bucket =
        backup::ensure_bucket(deps.store.jetstream(), 1).await.map_err(|e| broken("opening the backups", e))?;
    let id = backup_id.hyphenated().to_string();
    let bytes = backup::get(&bucket, &id)
        .await
        .map_err(|e| broken("reading a backup", e))?
        .ok_or_else(|| CommandFailure::new("NOT_FOUND", "no such backup"))?;
    let mut parsed = backup::Backup::parse(&bytes).map_err(|e| broken("reading a backup", e))?;
    let source = Scope::Tenant(parsed.tenant.clone());
    if keys_gone(&deps.keys, &source).await? {
        return Err(CommandFailure::new("NOT_FOUND", "the backup's tenant was deleted"));
    }
    let (name, owner) = parsed.tenant_name_and_owner().ok_or_else(|| broken("a backup", "it has no TenantCreated"))?;
    let name = crate::domain::tenant::TenantName::parse(&name).map_err(|e| broken("a backup's tenant name", e))?;
    // Events under a slug without its creation are an unfinished restore's.
    if started > 0 {
        return Err(CommandFailure::new(
            "CONFLICT",
            "this slug holds the events of an unfinished restore; restore under another slug",
        ));
    }
    // Keys of persons erased since the backup stay destroyed.
    parsed.keep_keys(&live_keys(&deps.keys, &source).await?);
    let last = backup::restore(&deps.store, &deps.keys, &parsed, &slug, stamp.command_id.as_str())
        .await
        .map_err(|e| broken("restoring a backup", e))?;
    let cmd =
        TenantCommand::Create { slug: slug.clone(), name, owner_account_id: owner.clone(), restored_from: Some(id) };
    let done = execute::<Tenant>(&deps.store, &Scope::Platform, slug.as_str(), None, &stamp, &cmd, deps.snapshot_every)
        .await
        .map_err(|e| failure(e, "appending a restored tenant"))?;
    Ok(TenantReply::Created { slug, owner_account_id: owner, seq: done.seq.max(last) })
}

/// Whether a tenant's data key is gone (the tenant was deleted).
async fn keys_gone(keys: &KeyRing, tenant: &Scope) -> CommandResult<bool> {
    match keys.wrapped(&tenant_key_name(tenant)).await {
        Ok(Some(_)) => Ok(false),
        Ok(None) | Err(crate::store::seal::SealError::Shredded(_)) => Ok(true),
        Err(e) => Err(broken("reading a tenant key", e)),
    }
}

/// The key names of `tenant` that exist now.
async fn live_keys(keys: &KeyRing, tenant: &Scope) -> CommandResult<std::collections::HashSet<String>> {
    let mut names: std::collections::HashSet<String> = keys
        .names(&person_key_name(tenant, ""))
        .await
        .map_err(|e| broken("listing a tenant's keys", e))?
        .into_iter()
        .collect();
    names.insert(tenant_key_name(tenant));
    let mut live = std::collections::HashSet::new();
    for name in names {
        if matches!(keys.wrapped(&name).await, Ok(Some(_))) {
            live.insert(name);
        }
    }
    Ok(live)
}

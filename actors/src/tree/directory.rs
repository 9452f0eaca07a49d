//! The directory handler: the platform tree's aggregate actor for tenants. A
//! tenant and its owner account are appended as one atomic batch, so there is
//! never a tenant without an owner, nor an owner without a tenant. Creations of
//! one slug run in its lane; creations of different slugs run at once.

use crate::command::{CommandEnvelope, CommandFailure, CommandResult, TenantReply, TenantRequest};
use crate::domain::access::{ACCESS_ID, Access, AccessCommand, AccessState};
use crate::domain::account::{Account, AccountCommand};
use crate::domain::aggregate::Aggregate;
use crate::domain::tenant::{Scope, Tenant, TenantCommand, TenantCreated, TenantError, TenantId, TenantState};
use crate::store::event_store::{Stamp, StoreErrorKind, batch_for, event_subject};
use crate::tree::account::{NewAccount, account_id_for, prepare_registration, request_digest};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::executor::Loaded;

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
        if !envelope.principal.is_platform_admin() {
            return Err(CommandFailure::forbidden("only a platform administrator may create tenants"));
        }
        let TenantRequest::Create { slug, .. } = &envelope.request;
        Ok(Route::Lane(slug.as_str().to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<TenantRequest>,
        _state: &mut Option<Loaded<Tenant>>,
    ) -> CommandResult<TenantReply> {
        // A creation reads the directory's subject itself: two nodes may race on
        // one slug, and the expected sequence 0 lets exactly one win.
        create(&ctx.deps, envelope).await
    }
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
    let digest = request_digest(deps, &Scope::Platform, &envelope.digest_input()).await?;
    let CommandEnvelope { command_id, request, .. } = envelope;
    let stamp = Stamp { command_id, digest };
    let TenantRequest::Create { slug, name, owner_email, owner_password } = request;
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
    let tenant_cmd = TenantCommand::Create { slug: slug.clone(), name, owner_account_id: owner_id.to_string() };
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

//! Modules in GraphQL: the catalog (`modules`), what the caller's tenant holds
//! (`tenantModules`), and `subscribeModule`, `unsubscribeModule`,
//! `upgradeModule`, `migrate`, `seedModules` and `deseedModules` (permission
//! `manage_modules`; a platform administrator may name any tenant with
//! `x-tenant-id`). Each mutation is a command to the tenant's modules actor.

use actors::command::{ModulesReply, ModulesRequest, PlanStep};
use async_graphql::{Context, InputObject, Object, SimpleObject};

use super::request::{bad_input, command_id, consistent, internal, parts, send, settle, tenant_of};
use crate::App;
use crate::read_model::ModuleRow;

/// One version of a module in the catalog.
#[derive(SimpleObject)]
pub struct ModuleVersionInfo {
    /// `v1`.
    version: String,
    /// The manifest's full version, such as `1.4.2`.
    full_version: String,
    description: String,
    /// Such as `contacts@v1`.
    depends_on: Vec<String>,
    /// The tables it defines.
    tables: Vec<String>,
    /// The version it upgrades from (`v1`), if it has an upgrade path.
    upgrades_from: Option<String>,
}

/// A module of the catalog with its versions.
#[derive(SimpleObject)]
pub struct ModuleInfo {
    name: String,
    versions: Vec<ModuleVersionInfo>,
}

/// A module the tenant holds.
#[derive(SimpleObject)]
pub struct TenantModule {
    name: String,
    /// `v1`.
    version: String,
    full_version: String,
    subscribed_at: String,
    /// The version an upgrade too large for one batch is moving the module
    /// to (`v2`), while its records are rewritten; record writes wait for it.
    upgrading_to: Option<String>,
    /// The migrations applied, in order, with their checksums.
    migrations: Vec<AppliedMigration>,
}

#[derive(SimpleObject)]
pub struct AppliedMigration {
    name: String,
    checksum: String,
    /// `install`, `upgrade` or `baseline` (replaced by an upgrade, never run).
    kind: String,
    applied_at: String,
}

/// One step of a modules change: done, or for a dry run, planned.
#[derive(SimpleObject)]
pub struct ModuleStep {
    /// `contacts@v1`.
    module: String,
    /// `subscribe`, `migration`, `upgrade_migration`, `transform`, `seed`,
    /// `deseed`, `unsubscribe` or `upgrade`.
    action: String,
    detail: String,
}

impl From<PlanStep> for ModuleStep {
    fn from(s: PlanStep) -> Self {
        Self { module: s.module, action: s.action, detail: s.detail }
    }
}

/// What a modules mutation did.
#[derive(SimpleObject)]
pub struct ModuleChange {
    steps: Vec<ModuleStep>,
    /// False for a dry run: nothing was changed.
    applied: bool,
}

#[derive(InputObject)]
pub struct SubscribeModuleInput {
    name: String,
    /// `v1` (or a full version such as `1.4`, which reaches `v1`).
    version: String,
    /// Subscribe missing dependencies in the same command.
    #[graphql(default)]
    with_dependencies: bool,
}

#[derive(InputObject)]
pub struct UpgradeModuleInput {
    name: String,
    /// The version to move to, such as `v2`.
    to: String,
}

#[derive(InputObject)]
pub struct MigrateInput {
    /// One module; all the tenant holds when left out.
    module: Option<String>,
    /// Answer the plan without changing anything.
    #[graphql(default)]
    dry_run: bool,
    /// Write the main seeds again over their own records.
    #[graphql(default)]
    force: bool,
}

/// A major version from `v1`, `1`, `1.4` or `v1.4.2` (the registry's rule
/// for full versions; major 0 is no version).
pub fn major_of(raw: &str) -> Option<u32> {
    let raw = raw.strip_prefix('v').unwrap_or(raw);
    actors::domain::manifest::Registry::parse_full_version(raw).map(|(major, _)| major).filter(|m| *m > 0)
}

/// A module name as the registry spells them, or `BAD_USER_INPUT`.
fn module_name(field: &'static str, raw: &str) -> async_graphql::Result<String> {
    let ok = (2..=32).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(raw.to_owned()) } else { Err(bad_input(field, "not a module name")) }
}

#[derive(Default)]
pub struct ModulesQuery;

#[Object]
impl ModulesQuery {
    /// Every module version this node serves.
    async fn modules(&self, ctx: &Context<'_>) -> Vec<ModuleInfo> {
        let (app, _) = parts(ctx);
        let mut out: Vec<ModuleInfo> = Vec::new();
        for v in app.modules.all() {
            let info = ModuleVersionInfo {
                version: format!("v{}", v.major),
                full_version: v.full_version.clone(),
                description: v.description.clone(),
                depends_on: v.depends_on.iter().map(ToString::to_string).collect(),
                tables: v.tables.keys().cloned().collect(),
                upgrades_from: v.upgrade.as_ref().map(|u| format!("v{}", u.from)),
            };
            match out.last_mut() {
                Some(m) if m.name == v.name.as_str() => m.versions.push(info),
                _ => out.push(ModuleInfo { name: v.name.to_string(), versions: vec![info] }),
            }
        }
        out
    }

    /// The modules the tenant holds (permission `manage_modules`).
    async fn tenant_modules(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TenantModule>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "modules belong to a tenant")?;
        consistent(app, req).await;
        let rows = app.read_model.tenant_modules(&req.scope).await.map_err(|e| internal("reading modules", e))?;
        Ok(rows.into_iter().map(tenant_module).collect())
    }
}

fn tenant_module(r: ModuleRow) -> TenantModule {
    TenantModule {
        name: r.module,
        version: format!("v{}", r.major),
        full_version: r.full_version,
        subscribed_at: r.subscribed_at,
        upgrading_to: r.upgrading_to.map(|m| format!("v{m}")),
        migrations: r
            .migrations
            .into_iter()
            .map(|m| AppliedMigration {
                name: m.migration,
                checksum: m.checksum,
                kind: m.kind,
                applied_at: m.applied_at,
            })
            .collect(),
    }
}

/// Sends a modules request to the tenant's modules actor and, unless it was a
/// dry run, waits until its events are projected.
pub async fn modules_command(
    ctx: &Context<'_>,
    app: &App,
    operation: &str,
    request: ModulesRequest,
    dry_run: bool,
) -> async_graphql::Result<ModuleChange> {
    let req = ctx.data_unchecked::<super::request::RequestCtx>();
    tenant_of(req, "modules belong to a tenant")?;
    let reply: ModulesReply = send(app, req, &req.scope, "modules", command_id(req, operation), request).await?;
    if reply.seq > 0 {
        settle(ctx, app, reply.seq).await?;
    }
    Ok(ModuleChange { steps: reply.steps.into_iter().map(Into::into).collect(), applied: !dry_run })
}

#[derive(Default)]
pub struct ModulesMutation;

#[Object]
impl ModulesMutation {
    /// Subscribes the tenant to a module version; with `auto_migrate` (the
    /// default) its migrations and main seeds are applied in the same command.
    async fn subscribe_module(
        &self,
        ctx: &Context<'_>,
        input: SubscribeModuleInput,
    ) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = module_name("input.name", &input.name)?;
        let major = major_of(&input.version).ok_or_else(|| bad_input("input.version", "not a version such as v1"))?;
        let migrate = app.config.auto_migrate;
        let request = ModulesRequest::Subscribe { module, major, with_dependencies: input.with_dependencies, migrate };
        modules_command(ctx, app, "subscribeModule", request, false).await
    }

    /// Drops a module; refused while another module the tenant holds depends on it.
    async fn unsubscribe_module(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = module_name("name", &name)?;
        modules_command(ctx, app, "unsubscribeModule", ModulesRequest::Unsubscribe { module }, false).await
    }

    /// Moves a module to another major version through the version's upgrade
    /// path: its upgrade migrations run and every record is transformed, or,
    /// if any record does not fit the new version, nothing changes and the
    /// error names the step that failed.
    async fn upgrade_module(
        &self,
        ctx: &Context<'_>,
        input: UpgradeModuleInput,
    ) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = module_name("input.name", &input.name)?;
        let to = major_of(&input.to).ok_or_else(|| bad_input("input.to", "not a version such as v2"))?;
        modules_command(ctx, app, "upgradeModule", ModulesRequest::Upgrade { module, to }, false).await
    }

    /// Runs pending migrations (and main seeds not yet applied); `dryRun`
    /// answers the plan, `force` writes the main seeds again.
    async fn migrate(&self, ctx: &Context<'_>, input: MigrateInput) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = input.module.as_deref().map(|m| module_name("input.module", m)).transpose()?;
        let request = ModulesRequest::Migrate { module, force: input.force, dry_run: input.dry_run };
        modules_command(ctx, app, "migrate", request, input.dry_run).await
    }

    /// Adds the temporary seeds of a module (or of every module held).
    async fn seed_modules(&self, ctx: &Context<'_>, module: Option<String>) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = module.as_deref().map(|m| module_name("module", m)).transpose()?;
        modules_command(ctx, app, "seedModules", ModulesRequest::Seed { module }, false).await
    }

    /// Removes the temporary seeds that no user changed.
    async fn deseed_modules(&self, ctx: &Context<'_>, module: Option<String>) -> async_graphql::Result<ModuleChange> {
        let (app, _) = parts(ctx);
        let module = module.as_deref().map(|m| module_name("module", m)).transpose()?;
        modules_command(ctx, app, "deseedModules", ModulesRequest::Deseed { module }, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::major_of;

    #[test]
    fn a_version_reaches_its_major_and_nothing_else_parses() {
        for (raw, major) in [("v1", 1), ("1", 1), ("1.4", 1), ("v1.4.2", 1), ("1.0.1", 1), ("v64", 64)] {
            assert_eq!(major_of(raw), Some(major), "{raw}");
        }
        for bad in ["", "v", "V1", "v0", "v01", "v1z", "1.", "1..2", "v1.2.3.4", "-1", "v1 ", "vv1", "99999999999"] {
            assert_eq!(major_of(bad), None, "{bad:?}");
        }
    }
}

//! The modules a tenant holds: one aggregate per tenant (`modules.tenant`), so
//! the rules across modules (a dependency is held at the version that needs
//! it; a module is not dropped while another depends on it; one version of a
//! module at a time) are one decision. It also records every migration
//! applied (with its file's checksum) and every seeding, so a migration runs
//! once and a changed migration file is noticed.
//!
//! What a decision needs from the module registry comes in the command as the
//! registry itself (manifests are plain data); the records a seeding, deseeding
//! or upgrade writes are prepared by the handler and land in the same atomic
//! batch as `Reservation`s on their record aggregates.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError, Reservation};
use crate::domain::manifest::{Migration, ModuleRef, ModuleVersion, Registry};

/// The id of a tenant's one modules aggregate.
pub const MODULES_ID: &str = "tenant";

/// How a migration came to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    /// One of the version's `migrations/`.
    Install,
    /// One of the version's `upgrade/` migrations, run by an upgrade.
    Upgrade,
    /// One of the version's `migrations/` that an upgrade replaced: recorded
    /// as applied, never run.
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeedKind {
    Main,
    Temp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleSubscribed {
    pub module: String,
    pub major: u32,
    /// The manifest's full version at the time, such as `1.4.2`.
    pub full_version: String,
    /// Counts the module's subscriptions in this tenant: records of an
    /// earlier subscription are never seen again.
    pub generation: u64,
    /// Set when the module was subscribed as a dependency of this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleUnsubscribed {
    pub module: String,
    pub major: u32,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleUpgraded {
    pub module: String,
    pub from: u32,
    pub to: u32,
    pub full_version: String,
    /// How many records the upgrade rewrote (their `RecordTransformed` events
    /// are in the same batch, or, after a `ModuleUpgradeStarted`, before it).
    pub records: u64,
}

/// An upgrade too large for one atomic batch began: until its
/// `ModuleUpgraded`, the module's records are written by the upgrade alone,
/// in batches, and a record's own major version says whether it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleUpgradeStarted {
    pub module: String,
    pub from: u32,
    pub to: u32,
    /// How many records the upgrade rewrites.
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MigrationApplied {
    pub module: String,
    pub major: u32,
    /// The file's name: `0001_init.surql` (or `upgrade/0001_from_v1.surql`).
    pub migration: String,
    /// Lowercase hex SHA-256 of the file.
    pub checksum: String,
    pub kind: MigrationKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeedsApplied {
    pub module: String,
    pub major: u32,
    pub kind: SeedKind,
    /// The records the seeding created or (forced) wrote over.
    pub records: Vec<String>,
    /// Main seeds written again over their own records.
    #[serde(default)]
    pub forced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeedsRemoved {
    pub module: String,
    /// Temporary records deleted.
    pub records: Vec<String>,
    /// Temporary records kept because a user changed them (or deleted already).
    pub kept: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ModulesEvent {
    /// The tenant subscribed to a module version.
    ModuleSubscribed(ModuleSubscribed),
    /// The tenant dropped a module; its records stay in the log, unreachable.
    ModuleUnsubscribed(ModuleUnsubscribed),
    /// The tenant moved a module to its next major version.
    ModuleUpgraded(ModuleUpgraded),
    /// An upgrade that rewrites its records in several batches began.
    ModuleUpgradeStarted(ModuleUpgradeStarted),
    /// A migration was applied to the tenant's module tables.
    MigrationApplied(MigrationApplied),
    /// Main or temporary seeds were written.
    SeedsApplied(SeedsApplied),
    /// Temporary seeds were removed.
    SeedsRemoved(SeedsRemoved),
}

/// One module a tenant holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub major: u32,
    pub full_version: String,
    pub generation: u64,
    /// Applied migrations: file name to checksum.
    pub migrations: BTreeMap<String, String>,
    pub main_seeded: bool,
    /// The live temporary seed records.
    pub temp_records: Vec<String>,
    /// How many temporary seedings there were (each creates new ids).
    pub temp_rounds: u64,
    /// The major version a batched upgrade is moving the module to: until it
    /// ends, only the upgrade writes the module's records.
    #[serde(default)]
    pub upgrading: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModulesState {
    pub subscribed: BTreeMap<String, Subscription>,
    /// The last generation of every module ever subscribed.
    pub generations: BTreeMap<String, u64>,
}

impl ModulesState {
    /// The generation a new subscription of `module` gets.
    pub fn next_generation(&self, module: &str) -> u64 {
        self.generations.get(module).copied().unwrap_or(0) + 1
    }

    /// The subscribed modules that depend on `module`.
    pub fn dependents(&self, registry: &Registry, module: &str) -> Vec<String> {
        self.subscribed
            .iter()
            .filter(|(name, sub)| {
                registry.get(name, sub.major).is_some_and(|v| v.depends_on.iter().any(|d| d.name.as_str() == module))
            })
            .map(|(name, sub)| format!("{name}@v{}", sub.major))
            .collect()
    }
}

/// The records a seeding, deseeding or upgrade writes, prepared outside
/// `decide` (ids, validated values, unique claims, expected sequences).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordWrites {
    /// The records written, for the modules event.
    pub records: Vec<String>,
    /// Their events and claims, for the batch.
    pub writes: Vec<Reservation>,
}

#[derive(Debug, Clone)]
pub enum ModulesCommand {
    Subscribe {
        registry: Arc<Registry>,
        target: ModuleRef,
        with_dependencies: bool,
        /// Run the versions' migrations in the same batch (`auto_migrate`).
        migrate: bool,
        /// The main seeds of each module subscribed, when migrating.
        seeds: BTreeMap<String, RecordWrites>,
    },
    Unsubscribe {
        registry: Arc<Registry>,
        module: String,
    },
    Upgrade {
        registry: Arc<Registry>,
        module: String,
        to: u32,
        /// The transformed records, prepared and validated by the handler.
        records: RecordWrites,
        /// Records a batched upgrade transformed before this last batch.
        earlier: u64,
    },
    /// Begins an upgrade whose records do not fit in one batch.
    StartUpgrade {
        registry: Arc<Registry>,
        module: String,
        to: u32,
        records: u64,
    },
    /// Applies the pending migrations of `module` (and its main seeds, if a
    /// subscription has none yet).
    Migrate {
        registry: Arc<Registry>,
        module: String,
        seeds: RecordWrites,
    },
    Seed {
        module: String,
        kind: SeedKind,
        forced: bool,
        records: RecordWrites,
    },
    Deseed {
        module: String,
        removed: RecordWrites,
        kept: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModulesError {
    #[error("there is no module {0}")]
    UnknownModule(String),
    #[error("{module} needs {needs}, which this tenant does not hold; subscribe it first or pass withDependencies")]
    MissingDependency { module: String, needs: String },
    #[error("{module} needs {needs}, but this tenant holds {holds}")]
    VersionConflict { module: String, needs: String, holds: String },
    #[error("this tenant already holds {0}")]
    AlreadySubscribed(String),
    #[error("this tenant holds {holds}; use upgradeModule to move it to another version")]
    HoldsOtherVersion { holds: String },
    #[error("this tenant does not hold the module {0}")]
    NotSubscribed(String),
    #[error("{module} cannot be dropped while {dependents} depends on it")]
    HasDependents { module: String, dependents: String },
    #[error("{module} cannot be upgraded while {dependents} needs its current version")]
    UpgradeBlocked { module: String, dependents: String },
    #[error("{module} is being upgraded to v{to}; run upgradeModule to v{to} (or migrate) to finish it")]
    Upgrading { module: String, to: u32 },
    #[error("{module} has no upgrade path from v{from} to v{to}")]
    NoUpgradePath { module: String, from: u32, to: u32 },
    #[error(
        "migration {migration} of {module} was applied with checksum {applied} and its file now has {now}; an applied migration must not change"
    )]
    ChangedMigration { module: String, migration: String, applied: String, now: String },
    #[error("step {step} ({what}) failed: {problem}")]
    StepFailed { step: usize, what: String, problem: String },
    #[error("too many records for one upgrade or seeding ({count}, at most {limit})")]
    TooManyRecords { count: usize, limit: usize },
}

impl DomainError for ModulesError {
    fn code(&self) -> &'static str {
        match self {
            ModulesError::UnknownModule(_) | ModulesError::NotSubscribed(_) => "NOT_FOUND",
            ModulesError::ChangedMigration { .. } => "CONFLICT",
            ModulesError::TooManyRecords { .. } => "LIMIT_EXCEEDED",
            _ => "BAD_USER_INPUT",
        }
    }
}

/// The most events one atomic batch may hold (nats-server's limit is 1,000
/// messages per batch; the modules events and claims need room beside them).
pub const MAX_BATCH_WRITES: usize = 900;

/// The module versions a subscription to `target` installs, dependencies
/// first, or why it is refused.
pub fn install_order(
    state: &ModulesState,
    registry: &Registry,
    target: &ModuleRef,
    with_dependencies: bool,
) -> Result<Vec<Arc<ModuleVersion>>, ModulesError> {
    let version = registry
        .get(target.name.as_str(), target.major)
        .ok_or_else(|| ModulesError::UnknownModule(target.to_string()))?;
    if let Some(held) = state.subscribed.get(target.name.as_str()) {
        return Err(if held.major == target.major {
            ModulesError::AlreadySubscribed(target.to_string())
        } else {
            ModulesError::HoldsOtherVersion { holds: format!("{}@v{}", target.name, held.major) }
        });
    }
    let mut order: Vec<Arc<ModuleVersion>> = Vec::new();
    visit(state, registry, version, with_dependencies, &mut order)?;
    Ok(order)
}

/// Depth first: a version's dependencies are placed before it. The registry
/// has no cycles (it refuses them when it loads).
fn visit(
    state: &ModulesState,
    registry: &Registry,
    version: &Arc<ModuleVersion>,
    with_dependencies: bool,
    order: &mut Vec<Arc<ModuleVersion>>,
) -> Result<(), ModulesError> {
    for dep in &version.depends_on {
        let needs = dep.to_string();
        match state.subscribed.get(dep.name.as_str()) {
            Some(held) if held.major == dep.major => continue,
            Some(held) => {
                return Err(ModulesError::VersionConflict {
                    module: version.key().to_string(),
                    needs,
                    holds: format!("{}@v{}", dep.name, held.major),
                });
            }
            None if !with_dependencies => {
                return Err(ModulesError::MissingDependency { module: version.key().to_string(), needs });
            }
            None => {}
        }
        if order.iter().any(|v| v.name == dep.name) {
            continue;
        }
        let dv = registry.get(dep.name.as_str(), dep.major).ok_or(ModulesError::UnknownModule(needs))?;
        visit(state, registry, dv, with_dependencies, order)?;
    }
    order.push(version.clone());
    Ok(())
}

/// The migrations of `version` not yet applied to `sub`, in order; refused if
/// an applied one's file has changed.
pub fn pending_migrations<'v>(
    sub: &Subscription,
    version: &'v ModuleVersion,
) -> Result<Vec<&'v Migration>, ModulesError> {
    let mut pending = Vec::new();
    for m in &version.migrations {
        match sub.migrations.get(&m.name) {
            Some(applied) if applied != &m.checksum => {
                return Err(ModulesError::ChangedMigration {
                    module: version.key().to_string(),
                    migration: m.name.clone(),
                    applied: applied.clone(),
                    now: m.checksum.clone(),
                });
            }
            Some(_) => {}
            None => pending.push(m),
        }
    }
    Ok(pending)
}

fn applied(version: &ModuleVersion, m: &Migration, name: String, kind: MigrationKind) -> ModulesEvent {
    ModulesEvent::MigrationApplied(MigrationApplied {
        module: version.name.to_string(),
        major: version.major,
        migration: name,
        checksum: m.checksum.clone(),
        kind,
    })
}

fn seeded(version: &ModuleVersion, kind: SeedKind, records: &RecordWrites, forced: bool) -> ModulesEvent {
    ModulesEvent::SeedsApplied(SeedsApplied {
        module: version.name.to_string(),
        major: version.major,
        kind,
        records: records.records.clone(),
        forced,
    })
}

fn within_limit(writes: usize) -> Result<(), ModulesError> {
    if writes > MAX_BATCH_WRITES {
        return Err(ModulesError::TooManyRecords { count: writes, limit: MAX_BATCH_WRITES });
    }
    Ok(())
}

pub struct Modules;

impl Modules {
    fn held<'s>(state: &'s ModulesState, module: &str) -> Result<&'s Subscription, ModulesError> {
        state.subscribed.get(module).ok_or_else(|| ModulesError::NotSubscribed(module.to_owned()))
    }

    fn subscribe(
        state: &ModulesState,
        registry: &Registry,
        target: &ModuleRef,
        with_dependencies: bool,
        migrate: bool,
        seeds: &BTreeMap<String, RecordWrites>,
    ) -> Result<Decision<ModulesEvent>, ModulesError> {
        let order = install_order(state, registry, target, with_dependencies)?;
        let mut events = Vec::new();
        let mut writes = Vec::new();
        for version in &order {
            let name = version.name.to_string();
            events.push(ModulesEvent::ModuleSubscribed(ModuleSubscribed {
                module: name.clone(),
                major: version.major,
                full_version: version.full_version.clone(),
                generation: state.next_generation(&name),
                dependency_of: (version.name != target.name).then(|| target.to_string()),
            }));
            if !migrate {
                continue;
            }
            for m in &version.migrations {
                events.push(applied(version, m, m.name.clone(), MigrationKind::Install));
            }
            let main = seeds.get(&name).cloned().unwrap_or_default();
            events.push(seeded(version, SeedKind::Main, &main, false));
            writes.extend(main.writes);
        }
        within_limit(writes.len())?;
        Ok(Decision { events, reservations: writes })
    }

    /// The version an upgrade of `module` to `to` reaches and its path, if
    /// the upgrade may happen now.
    fn upgrade_target<'r>(
        state: &ModulesState,
        registry: &'r Registry,
        module: &str,
        to: u32,
    ) -> Result<(&'r Arc<ModuleVersion>, &'r crate::domain::manifest::Upgrade), ModulesError> {
        let held = Self::held(state, module)?;
        if let Some(going) = held.upgrading.filter(|g| *g != to) {
            return Err(ModulesError::Upgrading { module: module.to_owned(), to: going });
        }
        let no_path = || ModulesError::NoUpgradePath { module: module.to_owned(), from: held.major, to };
        let target = registry.get(module, to).ok_or_else(no_path)?;
        let upgrade = target.upgrade.as_ref().filter(|u| u.from == held.major).ok_or_else(no_path)?;
        // Every module that depends on this one needs the major it holds now.
        let dependents = state.dependents(registry, module);
        if !dependents.is_empty() {
            return Err(ModulesError::UpgradeBlocked { module: module.to_owned(), dependents: dependents.join(", ") });
        }
        Ok((target, upgrade))
    }

    fn upgrade(
        state: &ModulesState,
        registry: &Registry,
        module: &str,
        to: u32,
        records: &RecordWrites,
        earlier: u64,
    ) -> Result<Decision<ModulesEvent>, ModulesError> {
        let (target, upgrade) = Self::upgrade_target(state, registry, module, to)?;
        let held = Self::held(state, module)?;
        within_limit(records.writes.len())?;
        let mut events = vec![ModulesEvent::ModuleUpgraded(ModuleUpgraded {
            module: module.to_owned(),
            from: held.major,
            to,
            full_version: target.full_version.clone(),
            records: earlier + records.records.len() as u64,
        })];
        for m in &upgrade.migrations {
            events.push(applied(target, m, format!("upgrade/{}", m.name), MigrationKind::Upgrade));
        }
        for m in &target.migrations {
            let kind =
                if upgrade.baseline.contains(&m.name) { MigrationKind::Baseline } else { MigrationKind::Install };
            events.push(applied(target, m, m.name.clone(), kind));
        }
        Ok(Decision { events, reservations: records.writes.clone() })
    }

    fn migrate(
        state: &ModulesState,
        registry: &Registry,
        module: &str,
        seeds: &RecordWrites,
    ) -> Result<Decision<ModulesEvent>, ModulesError> {
        let held = Self::held(state, module)?;
        let version = registry
            .get(module, held.major)
            .ok_or_else(|| ModulesError::UnknownModule(format!("{module}@v{}", held.major)))?;
        let mut events: Vec<ModulesEvent> = pending_migrations(held, version)?
            .into_iter()
            .map(|m| applied(version, m, m.name.clone(), MigrationKind::Install))
            .collect();
        let mut reservations = Vec::new();
        if !held.main_seeded {
            within_limit(seeds.writes.len())?;
            events.push(seeded(version, SeedKind::Main, seeds, false));
            reservations = seeds.writes.clone();
        }
        Ok(Decision { events, reservations })
    }
}

impl Aggregate for Modules {
    const NAME: &'static str = "modules";
    type State = ModulesState;
    type Command = ModulesCommand;
    type Event = ModulesEvent;
    type Error = ModulesError;

    fn decide(state: &ModulesState, cmd: &ModulesCommand) -> Result<Decision<ModulesEvent>, ModulesError> {
        match cmd {
            ModulesCommand::Subscribe { registry, target, with_dependencies, migrate, seeds } => {
                Self::subscribe(state, registry, target, *with_dependencies, *migrate, seeds)
            }
            ModulesCommand::Unsubscribe { registry, module } => {
                let held = Self::held(state, module)?;
                let dependents = state.dependents(registry, module);
                if !dependents.is_empty() {
                    return Err(ModulesError::HasDependents {
                        module: module.clone(),
                        dependents: dependents.join(", "),
                    });
                }
                Ok(Decision::events(vec![ModulesEvent::ModuleUnsubscribed(ModuleUnsubscribed {
                    module: module.clone(),
                    major: held.major,
                    generation: held.generation,
                })]))
            }
            ModulesCommand::Upgrade { registry, module, to, records, earlier } => {
                Self::upgrade(state, registry, module, *to, records, *earlier)
            }
            ModulesCommand::StartUpgrade { registry, module, to, records } => {
                Self::upgrade_target(state, registry, module, *to)?;
                let held = Self::held(state, module)?;
                if held.upgrading.is_some() {
                    return Ok(Decision::events(Vec::new()));
                }
                Ok(Decision::events(vec![ModulesEvent::ModuleUpgradeStarted(ModuleUpgradeStarted {
                    module: module.clone(),
                    from: held.major,
                    to: *to,
                    records: *records,
                })]))
            }
            ModulesCommand::Migrate { registry, module, seeds } => Self::migrate(state, registry, module, seeds),
            ModulesCommand::Seed { module, kind, forced, records } => {
                let held = Self::held(state, module)?;
                within_limit(records.writes.len())?;
                if records.writes.is_empty() {
                    return Ok(Decision::events(Vec::new()));
                }
                let event = ModulesEvent::SeedsApplied(SeedsApplied {
                    module: module.clone(),
                    major: held.major,
                    kind: *kind,
                    records: records.records.clone(),
                    forced: *forced,
                });
                Ok(Decision { events: vec![event], reservations: records.writes.clone() })
            }
            ModulesCommand::Deseed { module, removed, kept } => {
                let held = Self::held(state, module)?;
                within_limit(removed.writes.len())?;
                if held.temp_records.is_empty() {
                    return Ok(Decision::events(Vec::new()));
                }
                let event = ModulesEvent::SeedsRemoved(SeedsRemoved {
                    module: module.clone(),
                    records: removed.records.clone(),
                    kept: kept.clone(),
                });
                Ok(Decision { events: vec![event], reservations: removed.writes.clone() })
            }
        }
    }

    fn evolve(mut state: ModulesState, event: &ModulesEvent) -> ModulesState {
        match event {
            ModulesEvent::ModuleSubscribed(s) => {
                state.generations.insert(s.module.clone(), s.generation);
                state.subscribed.insert(
                    s.module.clone(),
                    Subscription {
                        major: s.major,
                        full_version: s.full_version.clone(),
                        generation: s.generation,
                        migrations: BTreeMap::new(),
                        main_seeded: false,
                        temp_records: Vec::new(),
                        temp_rounds: 0,
                        upgrading: None,
                    },
                );
            }
            ModulesEvent::ModuleUnsubscribed(u) => {
                state.subscribed.remove(&u.module);
            }
            ModulesEvent::ModuleUpgraded(u) => {
                if let Some(sub) = state.subscribed.get_mut(&u.module) {
                    sub.major = u.to;
                    sub.full_version = u.full_version.clone();
                    sub.upgrading = None;
                    // The new version's migrations are recorded by the events after this one.
                    sub.migrations.clear();
                }
            }
            ModulesEvent::ModuleUpgradeStarted(u) => {
                if let Some(sub) = state.subscribed.get_mut(&u.module) {
                    sub.upgrading = Some(u.to);
                }
            }
            ModulesEvent::MigrationApplied(m) => {
                if let Some(sub) = state.subscribed.get_mut(&m.module) {
                    sub.migrations.insert(m.migration.clone(), m.checksum.clone());
                }
            }
            ModulesEvent::SeedsApplied(s) => {
                if let Some(sub) = state.subscribed.get_mut(&s.module) {
                    match s.kind {
                        SeedKind::Main => sub.main_seeded = true,
                        SeedKind::Temp => {
                            sub.temp_rounds += 1;
                            sub.temp_records.extend(s.records.iter().cloned());
                        }
                    }
                }
            }
            ModulesEvent::SeedsRemoved(r) => {
                if let Some(sub) = state.subscribed.get_mut(&r.module) {
                    sub.temp_records.clear();
                }
            }
        }
        state
    }
}

/// The module version and subscription a module actor serves.
#[derive(Debug, Clone)]
pub struct ModuleBinding {
    pub version: Arc<ModuleVersion>,
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::replay;

    /// A registry of `base@v1`, `base@v2` (upgrading from v1) and `addon@v1`
    /// depending on `base@v1`.
    fn registry() -> Arc<Registry> {
        let manifest = |name: &str, version: &str, deps: &str, extra: &str| {
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\ndescription = \"d\"\ndepends_on = [{deps}]\n\n[[permissions]]\nname = \"read_{name}\"\ndescription = \"r\"\n\n[tables.item]\ndescription = \"i\"\nread = \"read_{name}\"\nwrite = \"read_{name}\"\n\n[tables.item.fields.title]\ntype = \"string\"\n{extra}"
            )
        };
        let init = |table: &str| format!("DEFINE TABLE {table} SCHEMALESS;").into_bytes();
        let files = vec![
            ("base/v1/module.toml".to_owned(), manifest("base", "1.0.0", "", "").into_bytes()),
            ("base/v1/migrations/0001_init.surql".to_owned(), init("mod_base_item")),
            (
                "base/v2/module.toml".to_owned(),
                manifest(
                    "base",
                    "2.0.0",
                    "",
                    "\n[upgrade]\nfrom = \"v1\"\nmigrations = []\nbaseline = [\"0001_init.surql\"]\n",
                )
                .into_bytes(),
            ),
            ("base/v2/migrations/0001_init.surql".to_owned(), init("mod_base_item")),
            ("addon/v1/module.toml".to_owned(), manifest("addon", "1.0.0", "\"base@v1\"", "").into_bytes()),
            ("addon/v1/migrations/0001_init.surql".to_owned(), init("mod_addon_item")),
        ];
        Arc::new(Registry::from_files(files).expect("the test registry is valid"))
    }

    fn subscribe(registry: &Arc<Registry>, target: &str, with_dependencies: bool) -> ModulesCommand {
        ModulesCommand::Subscribe {
            registry: registry.clone(),
            target: ModuleRef::parse(target).unwrap(),
            with_dependencies,
            migrate: true,
            seeds: BTreeMap::new(),
        }
    }

    fn decide(given: &[ModulesEvent], cmd: &ModulesCommand) -> Result<Vec<ModulesEvent>, ModulesError> {
        Modules::decide(&replay::<Modules>(given), cmd).map(|d| d.events)
    }

    fn subscribed(given: &[ModulesEvent]) -> Vec<(String, u32)> {
        replay::<Modules>(given).subscribed.iter().map(|(n, s)| (n.clone(), s.major)).collect()
    }

    #[test]
    fn a_missing_dependency_is_refused_by_name_unless_it_comes_along() {
        let r = registry();
        let refused = decide(&[], &subscribe(&r, "addon@v1", false));
        assert!(
            matches!(&refused, Err(ModulesError::MissingDependency { needs, .. }) if needs == "base@v1"),
            "{refused:?}"
        );
        let events = decide(&[], &subscribe(&r, "addon@v1", true)).unwrap();
        let order: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                ModulesEvent::ModuleSubscribed(s) => Some(s.module.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(order, ["base", "addon"], "dependencies come first");
        assert!(events.iter().any(|e| matches!(e, ModulesEvent::MigrationApplied(m) if m.module == "addon")));
        assert_eq!(subscribed(&events), [("addon".to_owned(), 1), ("base".to_owned(), 1)]);
    }

    #[test]
    fn one_version_at_a_time_and_a_held_dependency_must_be_the_needed_major() {
        let r = registry();
        let v2 = decide(&[], &subscribe(&r, "base@v2", false)).unwrap();
        assert!(matches!(decide(&v2, &subscribe(&r, "base@v1", false)), Err(ModulesError::HoldsOtherVersion { .. })));
        assert!(matches!(decide(&v2, &subscribe(&r, "addon@v1", true)), Err(ModulesError::VersionConflict { .. })));
        assert!(matches!(decide(&v2, &subscribe(&r, "base@v2", false)), Err(ModulesError::AlreadySubscribed(_))));
    }

    #[test]
    fn a_module_others_depend_on_is_neither_dropped_nor_upgraded() {
        let r = registry();
        let both = decide(&[], &subscribe(&r, "addon@v1", true)).unwrap();
        let drop = ModulesCommand::Unsubscribe { registry: r.clone(), module: "base".into() };
        assert!(
            matches!(decide(&both, &drop), Err(ModulesError::HasDependents { dependents, .. }) if dependents == "addon@v1")
        );
        let up = ModulesCommand::Upgrade {
            registry: r.clone(),
            module: "base".into(),
            to: 2,
            records: RecordWrites::default(),
            earlier: 0,
        };
        assert!(matches!(decide(&both, &up), Err(ModulesError::UpgradeBlocked { .. })));
        // Once the dependent is gone, both work; a new subscription is a new generation.
        let mut log = both.clone();
        log.extend(decide(&log, &ModulesCommand::Unsubscribe { registry: r.clone(), module: "addon".into() }).unwrap());
        let upgraded = decide(&log, &up).unwrap();
        assert!(matches!(&upgraded[0], ModulesEvent::ModuleUpgraded(u) if u.from == 1 && u.to == 2));
        assert!(
            upgraded
                .iter()
                .any(|e| matches!(e, ModulesEvent::MigrationApplied(m) if m.kind == MigrationKind::Baseline))
        );
        log.extend(decide(&log, &drop).unwrap());
        let again = decide(&log, &subscribe(&r, "base@v1", false)).unwrap();
        assert!(matches!(&again[0], ModulesEvent::ModuleSubscribed(s) if s.generation == 2));
    }

    #[test]
    fn an_applied_migration_whose_file_changed_is_refused_and_nothing_is_pending_twice() {
        let r = registry();
        let log = decide(&[], &subscribe(&r, "base@v1", false)).unwrap();
        let migrate =
            ModulesCommand::Migrate { registry: r.clone(), module: "base".into(), seeds: RecordWrites::default() };
        // Everything ran with the subscription (seeds included): nothing is pending.
        assert_eq!(decide(&log, &migrate).unwrap(), vec![]);
        let mut tampered = log.clone();
        for e in &mut tampered {
            if let ModulesEvent::MigrationApplied(m) = e {
                m.checksum = "0".repeat(64);
            }
        }
        assert!(
            matches!(decide(&tampered, &migrate), Err(ModulesError::ChangedMigration { migration, .. }) if migration == "0001_init.surql")
        );
    }

    #[test]
    fn an_upgrade_needs_the_declared_path() {
        let r = registry();
        let log = decide(&[], &subscribe(&r, "addon@v1", true)).unwrap();
        let up = ModulesCommand::Upgrade {
            registry: r.clone(),
            module: "addon".into(),
            to: 2,
            records: RecordWrites::default(),
            earlier: 0,
        };
        assert!(matches!(decide(&log, &up), Err(ModulesError::NoUpgradePath { .. })));
        let missing = ModulesCommand::Upgrade {
            registry: r,
            module: "gone".into(),
            to: 2,
            records: RecordWrites::default(),
            earlier: 0,
        };
        assert!(matches!(decide(&log, &missing), Err(ModulesError::NotSubscribed(_))));
    }

    #[test]
    fn a_batched_upgrade_starts_once_blocks_other_targets_and_ends_with_its_count() {
        let r = registry();
        let mut log = decide(&[], &subscribe(&r, "base@v1", true)).unwrap();
        let start = ModulesCommand::StartUpgrade { registry: r.clone(), module: "base".into(), to: 2, records: 1500 };
        let started = decide(&log, &start).unwrap();
        assert!(matches!(&started[..], [ModulesEvent::ModuleUpgradeStarted(u)] if u.from == 1 && u.to == 2));
        log.extend(started);
        assert_eq!(replay::<Modules>(&log).subscribed["base"].upgrading, Some(2));
        // Starting again changes nothing; another target is refused until it ends.
        assert_eq!(decide(&log, &start).unwrap(), vec![]);
        let elsewhere = ModulesCommand::StartUpgrade { registry: r.clone(), module: "base".into(), to: 3, records: 1 };
        assert!(matches!(decide(&log, &elsewhere), Err(ModulesError::Upgrading { to: 2, .. })));
        let end = ModulesCommand::Upgrade {
            registry: r.clone(),
            module: "base".into(),
            to: 2,
            records: RecordWrites::default(),
            earlier: 1500,
        };
        let ended = decide(&log, &end).unwrap();
        assert!(matches!(&ended[0], ModulesEvent::ModuleUpgraded(u) if u.records == 1500 && u.from == 1));
        log.extend(ended);
        let state = replay::<Modules>(&log);
        assert_eq!((state.subscribed["base"].major, state.subscribed["base"].upgrading), (2, None));
    }
}

//! The modules handler (`ModulesActor`): a tenant's module subscriptions,
//! migrations and seeds, on the tenant's one `modules` lane. It prepares what
//! a decision writes on records (seed records, upgraded records, deseeded
//! ones) outside `decide`, checks it (values against the manifest, unique
//! values), and appends it in the modules event's atomic batch, so a seeding
//! or an upgrade lands whole or not at all. After every change it publishes
//! the tenant's subscriptions to the tree, which starts and stops the module
//! actors from them.

use crate::domain::manifest::shown;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::command::{
    CommandEnvelope, CommandFailure, CommandResult, ModulesReply, ModulesRequest, PlanStep, Principal,
};
use crate::domain::aggregate::Reservation;
use crate::domain::manifest::{ModuleRef, ModuleVersion, SeedRecord, Transform, Values};
use crate::domain::record::{
    Origin, RECORD, Record, RecordAggregate, RecordCreated, RecordDeleted, RecordEvent, RecordTransformed,
    RecordUpdated,
};
use crate::domain::tenant::Scope;
use crate::domain::tenant_modules::{
    MAX_BATCH_WRITES, MODULES_ID, ModuleBinding, Modules, ModulesCommand, ModulesError, ModulesState, RecordWrites,
    SeedKind, Subscription, install_order, pending_migrations,
};
use crate::store::event_store::{Stamp, StoreErrorKind, batch_for, event_of, kind_filter, now_rfc3339};
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route, TreeLink};
use crate::tree::deps::{Deps, broken};
use crate::tree::directory::insider_may;
use crate::tree::executor::{Loaded, execute, load};
use crate::tree::record::{claim_changes, erase_records, has_personal, open_values, seal_values, seed_record_id};

pub struct ModulesHandler;

pub type ModulesActor = AggregateActor<ModulesHandler>;
pub type ModulesMsg = AggregateMsg<ModulesHandler>;

/// The permission every modules request needs (a platform administrator
/// needs none).
pub const MANAGE_MODULES: &str = "manage_modules";

impl Handler for ModulesHandler {
    type Aggregate = Modules;
    type Request = ModulesRequest;
    type Reply = ModulesReply;
    const NAME: &'static str = "ModulesActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<ModulesRequest>) -> CommandResult<Route> {
        let trusted = envelope.principal.is_platform_admin() || envelope.principal == Principal::Node;
        if envelope.principal.actor_in(scope).is_none() && !trusted {
            return Err(CommandFailure::forbidden(
                "only a member or access token of this tenant may change its modules",
            ));
        }
        Ok(Route::Lane(MODULES_ID.to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<ModulesRequest>,
        state: &mut Option<Loaded<Modules>>,
    ) -> CommandResult<ModulesReply> {
        let Ctx { scope, deps, link } = ctx;
        if !envelope.principal.is_platform_admin() && envelope.principal != Principal::Node {
            insider_may(deps, scope, &envelope.principal, MANAGE_MODULES).await?;
        }
        let stamp = stamp_for(deps, scope, &envelope).await?;
        if state.is_none() {
            *state =
                Some(load::<Modules>(&deps.store, scope, MODULES_ID).await.map_err(|e| broken("loading modules", e))?);
        }
        let run = Run { deps, scope, stamp: &stamp, link };
        let reply = run.request(envelope.request, state).await;
        publish(link, state);
        reply
    }
}

/// Tells the tree the subscriptions as they now are.
fn publish(link: &TreeLink, state: &Option<Loaded<Modules>>) {
    if let (Some(watch), Some(loaded)) = (&link.modules, state) {
        watch.send_replace(Some(Arc::new(loaded.state.clone())));
    }
}

fn rejected(e: ModulesError) -> CommandFailure {
    CommandFailure::rejected(&e)
}

fn step(module: &str, action: &str, detail: impl Into<String>) -> PlanStep {
    PlanStep { module: module.to_owned(), action: action.to_owned(), detail: detail.into() }
}

/// One request's work: what it needs from the tree and the node.
struct Run<'a> {
    deps: &'a Deps,
    scope: &'a Scope,
    stamp: &'a Stamp,
    link: &'a TreeLink,
}

/// How often a batched upgrade plans its remaining records again after a
/// batch lost to a concurrent write.
const UPGRADE_ATTEMPTS: usize = 4;

impl Run<'_> {
    async fn request(
        &self,
        request: ModulesRequest,
        state: &mut Option<Loaded<Modules>>,
    ) -> CommandResult<ModulesReply> {
        let current = state.as_ref().expect("loaded by run").state.clone();
        let registry = self.deps.modules.clone();
        match request {
            ModulesRequest::Subscribe { module, major, with_dependencies, migrate } => {
                let target = ModuleRef::parse(&format!("{module}@v{major}"))
                    .map_err(|_| rejected(ModulesError::UnknownModule(shown(&module))))?;
                let order = install_order(&current, &registry, &target, with_dependencies).map_err(rejected)?;
                let mut steps = Vec::new();
                let mut seeds = BTreeMap::new();
                for version in &order {
                    let key = version.key().to_string();
                    steps.push(step(&key, "subscribe", version.full_version.clone()));
                    if migrate {
                        steps.extend(version.migrations.iter().map(|m| step(&key, "migration", m.name.clone())));
                        let generation = current.next_generation(version.name.as_str());
                        let writes = self.seed_creates(version, generation, None, Origin::MainSeed).await?;
                        steps.push(step(&key, "seed", format!("{} main records", writes.records.len())));
                        seeds.insert(version.name.to_string(), writes);
                    }
                }
                let cmd = ModulesCommand::Subscribe { registry, target, with_dependencies, migrate, seeds };
                self.execute(state, cmd, steps).await
            }
            ModulesRequest::Unsubscribe { module } => {
                let held = held(&current, &module)?;
                let steps = vec![step(&format!("{module}@v{}", held.major), "unsubscribe", "")];
                self.execute(state, ModulesCommand::Unsubscribe { registry, module }, steps).await
            }
            ModulesRequest::Upgrade { module, to } => self.upgrade(state, &module, to).await,
            ModulesRequest::Migrate { module, force, dry_run } => {
                let mut steps = Vec::new();
                let mut seq = 0;
                for name in self.targets(&current, module.as_deref())? {
                    let sub = held(&current, &name)?;
                    if let Some(to) = sub.upgrading {
                        // A batched upgrade that stopped half-way is finished first.
                        let key = format!("{name}@v{}", sub.major);
                        steps.push(step(&key, "upgrade", format!("v{} to v{to}, resumed", sub.major)));
                        if !dry_run {
                            seq = self.upgrade(state, &name, to).await?.seq.max(seq);
                        }
                        continue;
                    }
                    let version = version_of(&registry, &name, sub)?;
                    let key = version.key().to_string();
                    let pending = pending_migrations(sub, &version).map_err(rejected)?;
                    let mut these: Vec<PlanStep> =
                        pending.iter().map(|m| step(&key, "migration", m.name.clone())).collect();
                    let seeds = if sub.main_seeded {
                        RecordWrites::default()
                    } else {
                        let w = self.seed_creates(&version, sub.generation, None, Origin::MainSeed).await?;
                        these.push(step(&key, "seed", format!("{} main records", w.records.len())));
                        w
                    };
                    let forced = if force { Some(self.force_main_seeds(&version, sub).await?) } else { None };
                    if let Some(f) = &forced {
                        these.push(step(&key, "seed", format!("{} main records written again", f.records.len())));
                    }
                    if !dry_run {
                        if !these.is_empty() {
                            let cmd =
                                ModulesCommand::Migrate { registry: registry.clone(), module: name.clone(), seeds };
                            seq = self.execute(state, cmd, Vec::new()).await?.seq.max(seq);
                        }
                        if let Some(records) = forced.filter(|f| !f.writes.is_empty()) {
                            let cmd = ModulesCommand::Seed {
                                module: name.clone(),
                                kind: SeedKind::Main,
                                forced: true,
                                records,
                            };
                            seq = self.execute(state, cmd, Vec::new()).await?.seq.max(seq);
                        }
                    }
                    steps.extend(these);
                }
                Ok(ModulesReply { seq, steps })
            }
            ModulesRequest::Seed { module } => {
                let mut steps = Vec::new();
                let mut seq = 0;
                for name in self.targets(&current, module.as_deref())? {
                    let sub = held(&current, &name)?;
                    if !sub.temp_records.is_empty() {
                        continue;
                    }
                    let version = version_of(&registry, &name, sub)?;
                    let round = Some(sub.temp_rounds + 1);
                    let records = self.seed_creates(&version, sub.generation, round, Origin::TempSeed).await?;
                    if records.records.is_empty() {
                        continue;
                    }
                    steps.push(step(
                        &version.key().to_string(),
                        "seed",
                        format!("{} temporary records", records.records.len()),
                    ));
                    let cmd =
                        ModulesCommand::Seed { module: name.clone(), kind: SeedKind::Temp, forced: false, records };
                    seq = self.execute(state, cmd, Vec::new()).await?.seq.max(seq);
                }
                Ok(ModulesReply { seq, steps })
            }
            ModulesRequest::Deseed { module } => {
                let mut steps = Vec::new();
                let mut seq = 0;
                for name in self.targets(&current, module.as_deref())? {
                    let sub = held(&current, &name)?;
                    if sub.temp_records.is_empty() {
                        continue;
                    }
                    let version = version_of(&registry, &name, sub)?;
                    let binding = ModuleBinding { version: version.clone(), generation: sub.generation };
                    let (removed, kept, erase) = self.deseed_plan(&binding, sub).await?;
                    let key = version.key().to_string();
                    steps.push(step(
                        &key,
                        "deseed",
                        format!("{} temporary records removed, {} kept", removed.records.len(), kept.len()),
                    ));
                    let cmd = ModulesCommand::Deseed { module: name.clone(), removed, kept };
                    seq = self.execute(state, cmd, Vec::new()).await?.seq.max(seq);
                    erase_records(self.deps, self.scope, &erase).await?;
                }
                Ok(ModulesReply { seq, steps })
            }
        }
    }

    /// Decides and appends `cmd` on the modules lane.
    async fn execute(
        &self,
        state: &mut Option<Loaded<Modules>>,
        cmd: ModulesCommand,
        steps: Vec<PlanStep>,
    ) -> CommandResult<ModulesReply> {
        // Each append of one request gets its own command id, derived from the
        // request's: a request may append more than once (a migration, then
        // forced seeds), and its retry finds each append.
        let id = crate::domain::ids::CommandId::parse(&derived_command_id(self.stamp, &cmd))
            .map_err(|e| broken("deriving a command id", e))?;
        let stamp = self.stamp.again(id);
        let done = execute::<Modules>(
            &self.deps.store,
            self.scope,
            MODULES_ID,
            state.take(),
            &stamp,
            &cmd,
            self.deps.snapshot_every,
        )
        .await;
        match done {
            Ok(done) => {
                let seq = done.seq;
                *state = Some(done.loaded);
                Ok(ModulesReply { seq, steps })
            }
            Err(e) => {
                // The next command loads the state again.
                *state = None;
                Err(failure(e, "appending a modules change"))
            }
        }
    }

    /// Upgrades `module` to `to`. An upgrade whose records fit in one batch
    /// lands whole or not at all. A larger one is checked whole first (a
    /// failing record names its step and nothing is appended), then begins
    /// with `ModuleUpgradeStarted`, which stops record writes to the module,
    /// rewrites its records in batches, and ends with `ModuleUpgraded` and the
    /// last batch. Each record's own major version says whether it is done,
    /// so an upgrade cut off half-way is finished by the next `upgradeModule`
    /// to the same version or `migrate`; a batch that loses to a concurrent
    /// write is planned again.
    async fn upgrade(&self, state: &mut Option<Loaded<Modules>>, module: &str, to: u32) -> CommandResult<ModulesReply> {
        let registry = self.deps.modules.clone();
        let mut plan = self.upgrade_plan(&state.as_ref().expect("loaded by run").state, module, to).await?;
        let batched = held(&state.as_ref().expect("loaded by run").state, module)?.upgrading.is_some();
        if !batched && plan.writes.writes.len() <= MAX_BATCH_WRITES {
            let cmd =
                ModulesCommand::Upgrade { registry, module: module.to_owned(), to, records: plan.writes, earlier: 0 };
            return self.execute(state, cmd, plan.steps).await;
        }
        if !batched {
            let records = plan.writes.records.len() as u64;
            let cmd =
                ModulesCommand::StartUpgrade { registry: registry.clone(), module: module.to_owned(), to, records };
            self.execute(state, cmd, Vec::new()).await?;
            // The module actor refuses record writes from now on.
            publish(self.link, state);
            plan = self.upgrade_plan(&state.as_ref().expect("kept by execute").state, module, to).await?;
        }
        for _ in 0..UPGRADE_ATTEMPTS {
            let mut batches = batches_of(std::mem::take(&mut plan.writes.writes));
            let last = batches.pop().unwrap_or_default();
            let mut lost = false;
            for batch in batches {
                if !self.append_records(&batch).await? {
                    lost = true;
                    break;
                }
            }
            if !lost {
                // The last batch's records end the list; those before it are written.
                let first_of_last = plan.writes.records.len() - count_records(&last);
                let records = RecordWrites { records: plan.writes.records.split_off(first_of_last), writes: last };
                let done = plan.done + first_of_last as u64;
                let cmd = ModulesCommand::Upgrade {
                    registry: registry.clone(),
                    module: module.to_owned(),
                    to,
                    records,
                    earlier: done,
                };
                match self.execute(state, cmd, plan.steps.clone()).await {
                    Err(e) if e.code == "CONFLICT" => {}
                    other => return other,
                }
            }
            plan = self.upgrade_plan(&state.as_ref().expect("kept by execute").state, module, to).await?;
        }
        Err(CommandFailure::new(
            "CONFLICT",
            format!("{module}'s records kept changing during its upgrade; run it again to finish"),
        ))
    }

    /// Appends one batch of an upgrade's record writes on their own (each
    /// record's event expecting its last sequence); `false` when a record
    /// changed since it was planned.
    async fn append_records(&self, writes: &[Reservation]) -> CommandResult<bool> {
        // The batch's id derives from its first record and sequence: a retry
        // of the same batch is a duplicate, a batch planned again is not.
        let first = writes.first().map(|w| format!("{}/{}", w.key, w.expected_seq)).unwrap_or_default();
        let id = crate::domain::ids::derived_uuid(&format!("{}/upgrade-batch/{first}", self.stamp.command_id));
        let id = crate::domain::ids::CommandId::parse(&id.replace('-', ""))
            .map_err(|e| broken("deriving a command id", e))?;
        let stamp = self.stamp.again(id);
        let batch = batch_for::<Modules>(self.scope, MODULES_ID, 0, &stamp, &[], writes)
            .map_err(|e| broken("preparing an upgrade batch", e))?;
        match self.deps.store.append(&stamp.command_id, batch).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StoreErrorKind::Conflict => Ok(false),
            Err(e) => Err(broken("appending an upgrade batch", e)),
        }
    }

    /// The held modules a request names (all of them when it names none).
    fn targets(&self, current: &ModulesState, module: Option<&str>) -> CommandResult<Vec<String>> {
        match module {
            Some(m) => {
                held(current, m)?;
                Ok(vec![m.to_owned()])
            }
            None => Ok(current.subscribed.keys().cloned().collect()),
        }
    }

    /// The records a seed file creates, validated, with their unique claims.
    async fn seed_creates(
        &self,
        version: &Arc<ModuleVersion>,
        generation: u64,
        round: Option<u64>,
        origin: Origin,
    ) -> CommandResult<RecordWrites> {
        let seeds = if round.is_some() { &version.temp_seeds } else { &version.main_seeds };
        let binding = ModuleBinding { version: version.clone(), generation };
        let at = now_rfc3339();
        let mut out = RecordWrites::default();
        for seed in seeds {
            let (id, table, values) = self.seed_values(&binding, round, seed)?;
            let claims = claim_changes(self.deps, self.scope, &binding, table, &id, None, Some(&values)).await?;
            let created = RecordEvent::RecordCreated(RecordCreated {
                module: version.name.to_string(),
                major: version.major,
                generation,
                table: table.name.clone(),
                values: seal_values(self.deps, self.scope, table, &id, values).await?,
                origin,
                at: at.clone(),
            });
            out.writes.push(created.as_write(&id, 0));
            out.writes.extend(RecordAggregate::claims(&id, &claims));
            out.records.push(id);
        }
        Ok(out)
    }

    /// A seed record's id, table and validated values, its references to other
    /// seed records resolved to their ids.
    fn seed_values<'v>(
        &self,
        binding: &'v ModuleBinding,
        round: Option<u64>,
        seed: &SeedRecord,
    ) -> CommandResult<(String, &'v crate::domain::manifest::Table, Values)> {
        let version = &binding.version;
        let name = version.name.as_str();
        let table = version.table(&seed.table).ok_or_else(|| broken("a seed", "names a table its manifest lacks"))?;
        let mut fields = seed.fields.clone();
        for (field, key) in seed.seed_references(table) {
            let target = match &table.fields[&field].kind {
                crate::domain::manifest::FieldType::Reference { table: t, .. } => t.clone(),
                _ => continue,
            };
            // A temporary seed may point at a main seed's record.
            let in_temp = round.is_some() && version.temp_seeds.iter().any(|s| s.table == target && s.key == key);
            let id =
                seed_record_id(self.scope, name, binding.generation, if in_temp { round } else { None }, &target, &key);
            fields.insert(field, serde_json::Value::String(id));
        }
        let values = table.validate_create(&fields).map_err(|e| broken("a seed", e))?;
        let id = seed_record_id(self.scope, name, binding.generation, round, &table.name, &seed.key);
        Ok((id, table, values))
    }

    /// Main seeds written again over their own records: each live one whose
    /// values differ from its seed's gets the seed's values back.
    async fn force_main_seeds(&self, version: &Arc<ModuleVersion>, sub: &Subscription) -> CommandResult<RecordWrites> {
        let binding = ModuleBinding { version: version.clone(), generation: sub.generation };
        let at = now_rfc3339();
        let mut out = RecordWrites::default();
        for seed in &version.main_seeds {
            let (id, table, values) = self.seed_values(&binding, None, seed)?;
            let loaded = load::<RecordAggregate>(&self.deps.store, self.scope, &id)
                .await
                .map_err(|e| broken("loading a seed record", e))?;
            let Some(record) = loaded.state.live() else { continue };
            let old = open_values(self.deps, self.scope, &id, &record.values).await?;
            if old == values {
                continue;
            }
            let claims = claim_changes(self.deps, self.scope, &binding, table, &id, Some(&old), Some(&values)).await?;
            let updated = RecordEvent::RecordUpdated(RecordUpdated {
                module: record.module.clone(),
                table: record.table.clone(),
                values: seal_values(self.deps, self.scope, table, &id, values).await?,
                by: Origin::MainSeed,
                at: at.clone(),
            });
            out.writes.push(updated.as_write(&id, loaded.version));
            out.writes.extend(RecordAggregate::claims(&id, &claims));
            out.records.push(id);
        }
        Ok(out)
    }

    /// The temporary records a deseed deletes (live, never changed by a user),
    /// the ones it keeps, and the deleted ones whose keys it then destroys.
    async fn deseed_plan(
        &self,
        binding: &ModuleBinding,
        sub: &Subscription,
    ) -> CommandResult<(RecordWrites, Vec<String>, Vec<String>)> {
        let at = now_rfc3339();
        let mut removed = RecordWrites::default();
        let mut kept = Vec::new();
        let mut erase = Vec::new();
        for id in &sub.temp_records {
            let loaded = load::<RecordAggregate>(&self.deps.store, self.scope, id)
                .await
                .map_err(|e| broken("loading a seed record", e))?;
            let Some(record) = loaded.state.live().filter(|r| r.origin == Origin::TempSeed && !r.user_changed) else {
                kept.push(id.clone());
                continue;
            };
            let table =
                binding.version.table(&record.table).ok_or_else(|| broken("a seed record", "of an unknown table"))?;
            let old = open_values(self.deps, self.scope, id, &record.values).await?;
            let claims = claim_changes(self.deps, self.scope, binding, table, id, Some(&old), None).await?;
            if has_personal(table) {
                erase.push(id.clone());
            }
            let deleted = RecordEvent::RecordDeleted(RecordDeleted {
                module: record.module.clone(),
                table: record.table.clone(),
                by: Origin::TempSeed,
                at: at.clone(),
            });
            removed.writes.push(deleted.as_write(id, loaded.version));
            removed.writes.extend(RecordAggregate::claims(id, &claims));
            removed.records.push(id.clone());
        }
        Ok((removed, kept, erase))
    }

    /// Every live record of `module`'s current subscription, with its last sequence.
    async fn records_of(&self, module: &str, generation: u64) -> CommandResult<Vec<(String, u64, Record)>> {
        let stored = self
            .deps
            .store
            .load(&kind_filter(self.scope, RECORD), 0)
            .await
            .map_err(|e| broken("reading a module's records", e))?;
        let mut states: HashMap<String, (u64, Option<Record>)> = HashMap::new();
        for s in stored {
            let event = event_of::<RecordAggregate>(&s.envelope).map_err(|e| broken("decoding a record event", e))?;
            let entry = states.entry(s.envelope.aggregate_id.clone()).or_default();
            let state = crate::domain::record::RecordState { record: entry.1.take() };
            entry.1 = <RecordAggregate as crate::domain::aggregate::Aggregate>::evolve(state, &event).record;
            entry.0 = s.seq;
        }
        let mut out: Vec<(String, u64, Record)> = states
            .into_iter()
            .filter_map(|(id, (seq, r))| r.map(|r| (id, seq, r)))
            .filter(|(_, _, r)| !r.deleted && r.module == module && r.generation == generation)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// An upgrade's record writes and its plan: every record not yet
    /// transformed is transformed and checked against the new version's table
    /// before anything is appended; the first record that fails names its step.
    async fn upgrade_plan(&self, current: &ModulesState, module: &str, to: u32) -> CommandResult<UpgradePlan> {
        let sub = held(current, module)?;
        let registry = &self.deps.modules;
        // Refused before any record is read, as `decide` would.
        let dependents = current.dependents(registry, module);
        if !dependents.is_empty() {
            return Err(rejected(ModulesError::UpgradeBlocked {
                module: module.to_owned(),
                dependents: dependents.join(", "),
            }));
        }
        let no_path = || rejected(ModulesError::NoUpgradePath { module: module.to_owned(), from: sub.major, to });
        let target = registry.get(module, to).ok_or_else(no_path)?.clone();
        let upgrade = target.upgrade.as_ref().filter(|u| u.from == sub.major).ok_or_else(no_path)?;
        let key = target.key().to_string();
        let mut steps: Vec<PlanStep> = vec![step(&key, "upgrade", format!("v{} to v{to}", sub.major))];
        steps.extend(upgrade.migrations.iter().map(|m| step(&key, "upgrade_migration", m.name.clone())));
        steps.extend(upgrade.transforms.iter().map(|t| step(&key, "transform", describe(t))));
        let binding = ModuleBinding { version: target.clone(), generation: sub.generation };
        let at = now_rfc3339();
        let mut writes = RecordWrites::default();
        let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut done = 0;
        for (id, seq, record) in self.records_of(module, sub.generation).await? {
            if record.major == to {
                // Transformed by a batch of this upgrade that was cut off.
                done += 1;
                continue;
            }
            let Some(table) = target.table(&record.table) else { continue };
            // A failure is the step's that last wrote the field at fault (or
            // the table's last transform): the step an author has to change.
            let step_of = |field: &str| {
                let on_table = |t: &&Transform| transform_table(t) == record.table;
                let wrote = |t: &&Transform| written_by(t).contains(&field);
                let at = upgrade
                    .transforms
                    .iter()
                    .rposition(|t| on_table(&t) && wrote(&t))
                    .or_else(|| upgrade.transforms.iter().rposition(|t| on_table(&t)));
                // Steps: the upgrade, its migrations, then the transforms.
                at.map_or(1, |i| 2 + upgrade.migrations.len() + i)
            };
            let fail = |field: &str, problem: String| {
                let n = step_of(field);
                rejected(ModulesError::StepFailed {
                    step: n,
                    what: steps.get(n - 1).map_or_else(String::new, |s| format!("{} {}", s.action, s.detail)),
                    problem: format!("record {id}: {problem}"),
                })
            };
            let old = open_values(self.deps, self.scope, &id, &record.values).await?;
            let transformed = upgrade.transform(&record.table, &old);
            let input: serde_json::Map<String, serde_json::Value> = transformed.into_iter().collect();
            let values = table.validate_create(&input).map_err(|e| fail(&e.field, e.to_string()))?;
            for field in table.fields.values().filter(|f| f.unique) {
                if let Some(v) = values.get(&field.name)
                    && !seen.insert((table.name.clone(), field.name.clone(), v.to_string()))
                {
                    return Err(fail(&field.name, format!("{}: the value is held by another record too", field.name)));
                }
            }
            let claims = claim_changes(self.deps, self.scope, &binding, table, &id, None, Some(&values)).await?;
            let event = RecordEvent::RecordTransformed(RecordTransformed {
                module: record.module.clone(),
                table: record.table.clone(),
                major: to,
                values: seal_values(self.deps, self.scope, table, &id, values).await?,
                at: at.clone(),
            });
            writes.writes.push(event.as_write(&id, seq));
            writes.writes.extend(RecordAggregate::claims(&id, &claims));
            writes.records.push(id);
        }
        steps.push(step(&key, "transform", format!("{} records", writes.records.len() as u64 + done)));
        Ok(UpgradePlan { writes, steps, done })
    }
}

/// What an upgrade still has to write, and how many records it already did.
struct UpgradePlan {
    writes: RecordWrites,
    steps: Vec<PlanStep>,
    done: u64,
}

/// An upgrade's record writes cut into batches of at most `MAX_BATCH_WRITES`,
/// each record's event with its claims in one batch.
fn batches_of(writes: Vec<Reservation>) -> Vec<Vec<Reservation>> {
    let mut groups: Vec<Vec<Reservation>> = Vec::new();
    for w in writes {
        match groups.last_mut() {
            Some(g) if w.aggregate != RECORD => g.push(w),
            _ => groups.push(vec![w]),
        }
    }
    let mut batches: Vec<Vec<Reservation>> = Vec::new();
    for g in groups {
        match batches.last_mut() {
            Some(b) if b.len() + g.len() <= MAX_BATCH_WRITES => b.extend(g),
            _ => batches.push(g),
        }
    }
    batches
}

/// How many records a batch writes (one event each, beside their claims).
fn count_records(batch: &[Reservation]) -> usize {
    batch.iter().filter(|w| w.aggregate == RECORD).count()
}

fn transform_table(t: &Transform) -> &str {
    match t {
        Transform::Rename { table, .. }
        | Transform::Split { table, .. }
        | Transform::Set { table, .. }
        | Transform::Drop { table, .. } => table,
    }
}

/// The fields a transform writes.
fn written_by(t: &Transform) -> Vec<&str> {
    match t {
        Transform::Rename { to, .. } => vec![to.as_str()],
        Transform::Split { into, .. } => into.iter().map(String::as_str).collect(),
        Transform::Set { field, .. } => vec![field.as_str()],
        Transform::Drop { .. } => Vec::new(),
    }
}

fn describe(t: &Transform) -> String {
    match t {
        Transform::Rename { table, field, to } => format!("{table}: rename {field} to {to}"),
        Transform::Split { table, field, into, .. } => format!("{table}: split {field} into {}, {}", into[0], into[1]),
        Transform::Set { table, field, .. } => format!("{table}: set {field} where empty"),
        Transform::Drop { table, field } => format!("{table}: drop {field}"),
    }
}

fn held<'s>(state: &'s ModulesState, module: &str) -> CommandResult<&'s Subscription> {
    state.subscribed.get(module).ok_or_else(|| rejected(ModulesError::NotSubscribed(shown(module))))
}

fn version_of(
    registry: &crate::domain::manifest::Registry,
    module: &str,
    sub: &Subscription,
) -> CommandResult<Arc<ModuleVersion>> {
    registry
        .get(module, sub.major)
        .cloned()
        .ok_or_else(|| rejected(ModulesError::UnknownModule(format!("{module}@v{}", sub.major))))
}

/// A distinct, deterministic command id for each append of one request, so a
/// retry of the request finds each of them.
fn derived_command_id(stamp: &Stamp, cmd: &ModulesCommand) -> String {
    let what = match cmd {
        ModulesCommand::Subscribe { .. } => "subscribe".to_owned(),
        ModulesCommand::Unsubscribe { .. } => "unsubscribe".to_owned(),
        ModulesCommand::Upgrade { .. } => "upgrade".to_owned(),
        ModulesCommand::StartUpgrade { .. } => "start-upgrade".to_owned(),
        ModulesCommand::Migrate { module, .. } => format!("migrate-{module}"),
        ModulesCommand::Seed { module, forced, .. } => format!("seed-{module}-{forced}"),
        ModulesCommand::Deseed { module, .. } => format!("deseed-{module}"),
    };
    let digest = crate::domain::ids::derived_uuid(&format!("{}/{what}", stamp.command_id));
    digest.replace('-', "")
}

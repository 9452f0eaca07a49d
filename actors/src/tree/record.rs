//! The record handler: a `ModuleActor(name@vN)` is the generic aggregate actor
//! with this handler, one per module a tenant holds, started by the tenant's
//! tree from its subscriptions. Every record is its own lane. Values are
//! validated against the module version's manifest before `decide`; unique
//! fields take keyed-hash claims in the record's batch; a reference must name a
//! live record of the referenced table.

use crate::command::{CommandEnvelope, CommandFailure, CommandResult, RecordOp, RecordReply, RecordRequest};
use crate::domain::ids::derived_uuid;
use crate::domain::manifest::shown;
use crate::domain::manifest::{FieldError, FieldType, Table, Values};
use crate::domain::record::{
    ClaimChange, ForRecord, Origin, RECORD, Record, RecordAggregate, RecordCommand, UNIQUE_CLAIM, VALUE_RELEASED,
};
use crate::domain::tenant::Scope;
use crate::domain::tenant_modules::ModuleBinding;
use crate::store::event_store::{aggregate_filter, event_subject, now_rfc3339};
use crate::store::seal::{SealError, Sealed, person_key_name, tenant_key_name};
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::directory::insider_may_cached;
use crate::tree::executor::{ExecError, Loaded, execute, load, refresh};

pub struct RecordHandler;

pub type ModuleActor = AggregateActor<RecordHandler>;
pub type ModuleMsg = AggregateMsg<RecordHandler>;

impl Handler for RecordHandler {
    type Aggregate = RecordAggregate;
    type Request = RecordRequest;
    type Reply = RecordReply;
    const NAME: &'static str = "ModuleActor";

    fn instance(request: &RecordRequest) -> Option<&str> {
        Some(&request.module)
    }

    fn route(scope: &Scope, envelope: &CommandEnvelope<RecordRequest>) -> CommandResult<Route> {
        if envelope.principal.actor_in(scope).is_none() {
            return Err(CommandFailure::forbidden(
                "only a member or access token of this tenant may change its records",
            ));
        }
        Ok(Route::Lane(match &envelope.request.op {
            RecordOp::Create { .. } => new_record_id(scope, &envelope.request.module, envelope.command_id.as_str()),
            RecordOp::Update { id, .. } | RecordOp::Delete { id } => id.hyphenated().to_string(),
        }))
    }

    async fn run(
        ctx: &Ctx,
        id: &str,
        envelope: CommandEnvelope<RecordRequest>,
        state: &mut Option<Loaded<RecordAggregate>>,
    ) -> CommandResult<RecordReply> {
        let Ctx { scope, deps, link } = ctx;
        let binding = link.module.as_ref().ok_or_else(|| broken("a module actor", "started without its module"))?;
        let request = &envelope.request;
        let version = &binding.version;
        if request.major != version.major {
            return Err(CommandFailure::new(
                "NOT_FOUND",
                format!("this tenant holds {}, not v{}", version.key(), request.major),
            ));
        }
        let table = version.table(&request.table).ok_or_else(|| {
            CommandFailure::new("NOT_FOUND", format!("{} has no table {}", version.key(), shown(&request.table)))
        })?;
        // Checked here too, not only at the edge: whoever reaches `cmd.{tenant}.record`.
        insider_may_cached(deps, scope, link, &envelope.principal, &table.write).await?;
        if let Some(to) = upgrading(link, version.name.as_str()) {
            return Err(CommandFailure::new(
                "CONFLICT",
                format!(
                    "{} is being upgraded to v{to}; its records can be changed again when that is done",
                    version.key()
                ),
            ));
        }
        let stamp = stamp_for(deps, scope, &envelope).await?;
        // The record is read again before each try: a change is validated
        // against the values it replaces, and one that lost to a concurrent
        // writer (a seeding, an upgrade, a unique value taken meanwhile) is
        // computed anew on what that writer left.
        let mut attempt = 0;
        let done = loop {
            attempt += 1;
            let loaded = match state.take() {
                Some(cached) => refresh::<RecordAggregate>(&deps.store, scope, id, cached).await,
                None => load::<RecordAggregate>(&deps.store, scope, id).await,
            }
            .map_err(|e| broken("loading a record", e))?;
            let seq = loaded.version;
            let mut current = loaded.state.record.clone();
            *state = Some(loaded);
            if let Some(r) = current.as_mut() {
                r.values = open_values(deps, scope, id, &r.values).await?;
            }
            let at = now_rfc3339();
            let command = match &request.op {
                RecordOp::Create { values } => {
                    if let Some(made) = &current {
                        // The id derives from the command's: an earlier try of this
                        // command made the record. The same request gets it; another
                        // under the same idempotency key is refused.
                        return replay_of_create(deps, scope, id, &stamp, made, seq).await;
                    }
                    let values = table.validate_create(values).map_err(invalid)?;
                    check_references(deps, scope, binding, table, &values).await?;
                    let claims = claim_changes(deps, scope, binding, table, id, None, Some(&values)).await?;
                    RecordCommand::Create {
                        module: version.name.to_string(),
                        major: version.major,
                        generation: binding.generation,
                        table: table.name.clone(),
                        values: seal_values(deps, scope, table, id, values).await?,
                        origin: Origin::User,
                        at,
                        claims,
                    }
                }
                RecordOp::Update { patch, .. } => {
                    let record = of_table(current.as_ref(), binding, &table.name)?;
                    let values = table.validate_patch(&record.values, patch).map_err(invalid)?;
                    if values == record.values {
                        // Compared in clear: sealed values differ on every sealing.
                        return Ok(reply_of(id, record, seq));
                    }
                    check_references(deps, scope, binding, table, &values).await?;
                    let claims =
                        claim_changes(deps, scope, binding, table, id, Some(&record.values), Some(&values)).await?;
                    let values = seal_values(deps, scope, table, id, values).await?;
                    RecordCommand::Update { major: version.major, values, by: Origin::User, at, claims }
                }
                RecordOp::Delete { .. } => {
                    let record = of_table(current.as_ref(), binding, &table.name)?;
                    let claims = claim_changes(deps, scope, binding, table, id, Some(&record.values), None).await?;
                    RecordCommand::Delete { major: version.major, by: Origin::User, at, claims }
                }
            };
            let cmd = ForRecord { id: id.to_owned(), command };
            match execute::<RecordAggregate>(&deps.store, scope, id, state.take(), &stamp, &cmd, deps.snapshot_every)
                .await
            {
                Ok(done) => break done,
                Err(ExecError::Conflict) if attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(failure(e, "appending a record change")),
            }
        };
        let record = done.loaded.state.record.clone();
        *state = Some(done.loaded);
        let mut record = record.ok_or_else(|| broken("a record command", "no record after the append"))?;
        if record.deleted {
            if has_personal(table) {
                erase_records(deps, scope, &[id.to_owned()]).await?;
            }
        } else {
            record.values = open_values(deps, scope, id, &record.values).await?;
        }
        Ok(reply_of(id, &record, done.seq))
    }
}

/// How many times a record command is computed and appended before a
/// concurrent writer's CONFLICT reaches the caller.
const WRITE_ATTEMPTS: u32 = 4;

/// The answer for `record` with its values in clear, after the change at `seq`.
fn reply_of(id: &str, record: &Record, seq: u64) -> RecordReply {
    RecordReply {
        id: id.to_owned(),
        values: if record.deleted { Default::default() } else { record.values.clone().into_iter().collect() },
        created_at: record.created_at.clone(),
        updated_at: record.updated_at.clone(),
        seq,
    }
}

/// The major version a batched upgrade of `module` is moving to, as the
/// modules actor last published it.
fn upgrading(link: &crate::tree::aggregate_actor::TreeLink, module: &str) -> Option<u32> {
    let watch = link.modules.as_ref()?;
    let state = watch.borrow();
    state.as_ref()?.subscribed.get(module)?.upgrading
}

/// The answer to a create that an earlier try of the same command already
/// made: the record as it is, if the request is the same.
async fn replay_of_create(
    deps: &Deps,
    scope: &Scope,
    id: &str,
    stamp: &crate::store::event_store::Stamp,
    made: &Record,
    seq: u64,
) -> CommandResult<RecordReply> {
    let created = deps
        .store
        .last_on_subject(&event_subject(scope, RECORD, id, "RecordCreated"))
        .await
        .map_err(|e| broken("reading a record's creation", e))?;
    if created.is_none_or(|c| c.envelope.request_digest != stamp.digest) {
        return Err(CommandFailure::reused_id());
    }
    Ok(reply_of(id, made, seq))
}

/// A created record's id: derived from its command's id, so a retry finds it.
pub fn new_record_id(scope: &Scope, module: &str, command_id: &str) -> String {
    derived_uuid(&format!("{scope}/record/{module}/{command_id}"))
}

/// A seed record's id: one per subscription (generation), table and key, and
/// for temporary seeds per seeding round, so a deseeded record is never
/// created again under its old id.
pub fn seed_record_id(
    scope: &Scope,
    module: &str,
    generation: u64,
    round: Option<u64>,
    table: &str,
    key: &str,
) -> String {
    let round = round.map(|r| format!("temp{r}")).unwrap_or_else(|| "main".to_owned());
    derived_uuid(&format!("{scope}/seed/{module}/{generation}/{round}/{table}/{key}"))
}

/// Whether a table holds personal fields, whose records then have keys of their own.
pub fn has_personal(table: &Table) -> bool {
    table.fields.values().any(|f| f.personal)
}

/// The values as the log holds them: each personal field's canonical JSON
/// sealed under the record's own key (`person.{tenant}.{record id}`, made on
/// first use), the other fields as they are.
pub async fn seal_values(
    deps: &Deps,
    scope: &Scope,
    table: &Table,
    record_id: &str,
    mut values: Values,
) -> CommandResult<Values> {
    if !has_personal(table) {
        return Ok(values);
    }
    let kid = person_key_name(scope, record_id);
    let key = deps.keys.key(&kid).await.map_err(|e| broken("reading a record's key", e))?;
    for field in table.fields.values().filter(|f| f.personal) {
        if let Some(v) = values.get_mut(&field.name) {
            let plain = serde_json::to_vec(v).map_err(|e| broken("sealing a record value", e))?;
            *v = serde_json::to_value(key.seal(&kid, &plain)).map_err(|e| broken("sealing a record value", e))?;
        }
    }
    Ok(values)
}

/// The values as a reader sees them: each sealed value opened with the
/// record's own key. A value sealed under any other key is refused; one whose
/// key is gone (the record was deleted, which erases it) is left out.
pub async fn open_values(deps: &Deps, scope: &Scope, record_id: &str, values: &Values) -> CommandResult<Values> {
    let kid = person_key_name(scope, record_id);
    let mut out = Values::new();
    for (name, value) in values {
        let Some(sealed) = Sealed::from_json(value) else {
            out.insert(name.clone(), value.clone());
            continue;
        };
        if sealed.kid != kid {
            return Err(broken("a record value", "is sealed under another record's key"));
        }
        let plain = match deps.keys.open(&sealed).await {
            Ok(p) => p,
            Err(SealError::MissingKey(_) | SealError::Shredded(_)) => continue,
            Err(e) => return Err(broken("opening a record value", e)),
        };
        let value = serde_json::from_slice(&plain).map_err(|e| broken("opening a record value", e))?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Erases the personal values of deleted records from the log: their keys
/// are destroyed once the deletions are appended.
pub async fn erase_records(deps: &Deps, scope: &Scope, record_ids: &[String]) -> CommandResult<()> {
    for id in record_ids {
        deps.keys.destroy(&person_key_name(scope, id)).await.map_err(|e| broken("erasing a deleted record", e))?;
    }
    Ok(())
}

fn invalid(e: FieldError) -> CommandFailure {
    CommandFailure::new("BAD_USER_INPUT", e.to_string())
}

/// The live record of this subscription's `table`, or NOT_FOUND: a record of
/// another table, module or subscription is not found here either.
fn of_table<'r>(record: Option<&'r Record>, binding: &ModuleBinding, table: &str) -> CommandResult<&'r Record> {
    record
        .filter(|r| {
            !r.deleted
                && r.module == binding.version.name.as_str()
                && r.generation == binding.generation
                && r.major == binding.version.major
                && r.table == table
        })
        .ok_or_else(|| CommandFailure::new("NOT_FOUND", "no such record"))
}

/// Every reference among `values` must name a live record of its table (of
/// this module's subscription, or of the depended-on module's current one).
pub async fn check_references(
    deps: &Deps,
    scope: &Scope,
    binding: &ModuleBinding,
    table: &Table,
    values: &Values,
) -> CommandResult<()> {
    for field in table.fields.values() {
        let FieldType::Reference { module, table: target } = &field.kind else { continue };
        let Some(id) = values.get(&field.name).and_then(|v| v.as_str()) else { continue };
        let target_module = module.as_ref().map_or(binding.version.name.as_str(), |m| m.as_str());
        let loaded =
            load::<RecordAggregate>(&deps.store, scope, id).await.map_err(|e| broken("reading a reference", e))?;
        let ok = loaded
            .state
            .live()
            .is_some_and(|r| r.module == target_module && &r.table == target && same_subscription(binding, r));
        if !ok {
            return Err(CommandFailure::new(
                "BAD_USER_INPUT",
                format!("{}: no {target} with id {}", field.name, shown(id)),
            ));
        }
    }
    Ok(())
}

/// A record of this module must be of its subscription; one of a dependency
/// is checked only for being live (the dependency's generation is its own).
fn same_subscription(binding: &ModuleBinding, r: &Record) -> bool {
    r.module != binding.version.name.as_str() || r.generation == binding.generation
}

/// The claim key of a unique value: a keyed hash under the tenant's key of the
/// module, subscription, major version, table, field and canonical value.
async fn claim_key(
    deps: &Deps,
    scope: &Scope,
    binding: &ModuleBinding,
    table: &str,
    field: &str,
    value: &serde_json::Value,
) -> CommandResult<String> {
    let key = deps.keys.key(&tenant_key_name(scope)).await.map_err(|e| broken("reading the tenant key", e))?;
    let v = &binding.version;
    Ok(key.blind_index("unique", &format!("{}/{}/{}/{table}/{field}/{value}", v.name, binding.generation, v.major)))
}

/// How the unique fields' claims move from `old` values to `new` ones: each
/// changed value's claim is released, and each new value must be free.
pub async fn claim_changes(
    deps: &Deps,
    scope: &Scope,
    binding: &ModuleBinding,
    table: &Table,
    record_id: &str,
    old: Option<&Values>,
    new: Option<&Values>,
) -> CommandResult<Vec<ClaimChange>> {
    let mut changes = Vec::new();
    for field in table.fields.values().filter(|f| f.unique) {
        let before = old.and_then(|v| v.get(&field.name));
        let after = new.and_then(|v| v.get(&field.name));
        if before == after {
            continue;
        }
        if let Some(value) = before {
            let key = claim_key(deps, scope, binding, &table.name, &field.name, value).await?;
            let last = deps
                .store
                .last_on_subject(&aggregate_filter(scope, UNIQUE_CLAIM, &key))
                .await
                .map_err(|e| broken("reading a unique claim", e))?;
            if let Some(held) = last.filter(|s| s.envelope.event_type != VALUE_RELEASED) {
                changes.push(ClaimChange { key, take: false, expected_seq: held.seq });
            }
        }
        if let Some(value) = after {
            let key = claim_key(deps, scope, binding, &table.name, &field.name, value).await?;
            changes.push(ClaimChange {
                expected_seq: free_claim(deps, scope, &key, &field.name, record_id).await?,
                key,
                take: true,
            });
        }
    }
    Ok(changes)
}

/// The sequence a new claim on `key` expects, or why the value is taken.
async fn free_claim(deps: &Deps, scope: &Scope, key: &str, field: &str, record_id: &str) -> CommandResult<u64> {
    let last = deps
        .store
        .last_on_subject(&aggregate_filter(scope, UNIQUE_CLAIM, key))
        .await
        .map_err(|e| broken("reading a unique claim", e))?;
    match last {
        None => Ok(0),
        Some(s) if s.envelope.event_type == VALUE_RELEASED => Ok(s.seq),
        Some(s) if s.envelope.data.get("record_id").and_then(|v| v.as_str()) == Some(record_id) => Ok(s.seq),
        Some(_) => Err(CommandFailure::new("BAD_USER_INPUT", format!("{field}: this value is already taken"))),
    }
}

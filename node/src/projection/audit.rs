//! The audit trail: one `audit` record per event of a scope (the email claims
//! aside), in that scope's database, read from the envelope: what (the event
//! type and aggregate), when, who (`actor`) and from where (`client`, opened
//! from its seal). A tenant's directory events are written to the tenant's
//! trail as well, so its members see who renamed or suspended it.

use actors::domain::account::EMAIL_CLAIM;
use actors::domain::record::UNIQUE_CLAIM;
use actors::domain::tenant::{Scope, TenantId};
use actors::store::event_store::{ActorKind, Stored};
use actors::store::seal::{KeyRing, SealError, person_key_name, tenant_key_name};
use serde::Deserialize;

use super::event::{ERASED, Unapplied, statement};
use crate::read_model::{Statement, db_name, record_id};

/// Whether an event of `aggregate` has a place in the trail.
pub fn audited(aggregate: &str) -> bool {
    aggregate != EMAIL_CLAIM && aggregate != UNIQUE_CLAIM
}

/// The other scope whose trail shows an event too: the tenant a directory
/// event is about (not its deletion, whose database is removed).
pub fn also_in(scope: &Scope, stored: &Stored) -> Option<Scope> {
    let e = &stored.envelope;
    let about_a_tenant = *scope == Scope::Platform && e.aggregate == "tenant" && e.event_type != "TenantDeleted";
    about_a_tenant.then(|| TenantId::parse(&e.aggregate_id).ok().map(Scope::Tenant)).flatten()
}

#[derive(Deserialize)]
struct Client {
    address: String,
    user_agent: Option<String>,
}

/// The audit record of `stored`, an event of `scope`.
pub async fn record(keys: &KeyRing, scope: &Scope, stored: &Stored) -> Result<Statement, Unapplied> {
    let e = &stored.envelope;
    let id = record_id("audit", &stored.seq.to_string()).ok_or_else(|| super::event::refused("unsafe id"))?;
    let ts = time::OffsetDateTime::parse(&e.occurred_at, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| super::event::refused("field `occurred_at` is no RFC 3339 time"))?;
    let (address, user_agent) = client(keys, scope, stored).await?;
    let actor = e.actor.as_ref();
    let mut row = serde_json::json!({
        "seq": stored.seq, "at": e.occurred_at, "ts": ts, "action": e.event_type,
        "aggregate": e.aggregate, "aggregate_id": e.aggregate_id,
    });
    // Absent values are left out (NONE), not null: the optional fields are `option<string>`.
    let optional = [
        (
            "actor_kind",
            actor.map(|a| match a.kind {
                ActorKind::Account => "account".to_owned(),
                ActorKind::Token => "token".to_owned(),
            }),
        ),
        ("actor_id", actor.map(|a| a.id.clone())),
        ("actor_tenant", actor.map(|a| a.tenant.clone())),
        ("address", address),
        ("user_agent", user_agent),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            row[k] = v.into();
        }
    }
    Ok(statement(format!("UPSERT {id} CONTENT $row RETURN NONE"), serde_json::json!({ "row": row })))
}

/// The client's address and user agent, opened with the key the envelope names
/// if it is one the event may use: the acting account's own key, or the key of
/// the event's or the actor's scope. A destroyed key reads as erased; a value
/// sealed under any other key, or one that does not open, is left out.
async fn client(keys: &KeyRing, scope: &Scope, stored: &Stored) -> Result<(Option<String>, Option<String>), Unapplied> {
    let e = &stored.envelope;
    let Some(sealed) = &e.client else { return Ok((None, None)) };
    let mut allowed = vec![tenant_key_name(scope)];
    if let Some(actor) = &e.actor
        && let Ok(home) = Scope::parse_token(&actor.tenant)
    {
        allowed.push(tenant_key_name(&home));
        if actor.kind == ActorKind::Account {
            allowed.push(person_key_name(&home, &actor.id));
        }
    }
    if !allowed.contains(&sealed.kid) {
        return Ok((None, None));
    }
    match keys.open(sealed).await {
        Ok(bytes) => {
            Ok(serde_json::from_slice::<Client>(&bytes).map_or((None, None), |c| (Some(c.address), c.user_agent)))
        }
        Err(SealError::MissingKey(_) | SealError::Shredded(_)) => Ok((Some(ERASED.into()), Some(ERASED.into()))),
        Err(SealError::Open) => Ok((None, None)),
        Err(other) => Err(Unapplied::Unavailable(other.into())),
    }
}

/// Blanks the client of every record by or about `account_id` in `scope`'s trail.
pub fn erasure(scope: &Scope, account_id: &str) -> (String, Statement) {
    (
        db_name(scope),
        statement(
            "UPDATE audit SET address = $erased, user_agent = $erased WHERE (actor_id = $id OR aggregate_id = $id) AND address != NONE RETURN NONE".into(),
            serde_json::json!({ "erased": ERASED, "id": account_id }),
        ),
    )
}

//! The audit trail in GraphQL: `auditLog` (permission `read_audit`; on the
//! platform, its administrators and the platform's own trail). Newest first,
//! read from the `audit` projection of the log.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject};

use super::request::{bad_input, consistent, internal, parts};
use crate::read_model::{AuditQuery, AuditRow};

/// The largest page.
const MAX_PAGE: i32 = 100;

/// What `auditLog` keeps; every field narrows the result.
#[derive(InputObject, Default)]
pub struct AuditFilter {
    /// The id of the account or access token that acted.
    actor: Option<async_graphql::ID>,
    /// An event type, such as `RoleCreated` or `SessionStarted`.
    action: Option<String>,
    /// RFC 3339: entries at or after this time.
    from: Option<String>,
    /// RFC 3339: entries before this time.
    to: Option<String>,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Account,
    AccessToken,
}

/// Who acted: an account (of `tenant`; `_system` for a platform administrator)
/// or an access token.
#[derive(SimpleObject)]
pub struct AuditActor {
    kind: ActorKind,
    id: async_graphql::ID,
    tenant: String,
}

/// One event of the trail.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// The event's sequence in the log.
    id: async_graphql::ID,
    /// RFC 3339, UTC.
    at: String,
    /// The event type.
    action: String,
    aggregate: String,
    aggregate_id: String,
    /// None for anonymous requests: registration, sign-in, resets, accepting
    /// an invitation (the aggregate says whose).
    actor: Option<AuditActor>,
    /// The client's address and user agent, as the edge saw them; `[erased]`
    /// once the person is erased.
    address: Option<String>,
    user_agent: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        let actor = match (r.actor_kind.as_deref(), r.actor_id) {
            (Some(kind), Some(id)) => Some(AuditActor {
                kind: if kind == "token" { ActorKind::AccessToken } else { ActorKind::Account },
                id: async_graphql::ID(id),
                tenant: r.actor_tenant.unwrap_or_default(),
            }),
            _ => None,
        };
        Self {
            id: async_graphql::ID(r.seq.to_string()),
            at: r.at,
            action: r.action,
            aggregate: r.aggregate,
            aggregate_id: r.aggregate_id,
            actor,
            address: r.address,
            user_agent: r.user_agent,
        }
    }
}

#[derive(Default)]
pub struct AuditQueryRoot;

#[Object]
impl AuditQueryRoot {
    /// The caller's tenant's audit trail, newest first (permission `read_audit`).
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditFilter>,
        #[graphql(desc = "page size, 1 to 100", default = 20)] first: i32,
        #[graphql(desc = "the `endCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditEntry>> {
        let (app, req) = parts(ctx);
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(bad_input("first", format!("must be between 1 and {MAX_PAGE}")));
        }
        let filter = filter.unwrap_or_default();
        let actor = match filter.actor {
            Some(id) if actors::domain::ids::is_safe_token(&id) => Some(id.0),
            Some(_) => return Err(bad_input("filter.actor", "not an account or access token id")),
            None => None,
        };
        let action = match filter.action {
            Some(a) if !a.is_empty() && a.len() <= 64 && a.bytes().all(|b| b.is_ascii_alphabetic()) => Some(a),
            Some(_) => return Err(bad_input("filter.action", "not an event type")),
            None => None,
        };
        let time = |field: &'static str, raw: Option<String>| -> async_graphql::Result<Option<i64>> {
            raw.map(|r| {
                time::OffsetDateTime::parse(&r, &time::format_description::well_known::Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                    .map_err(|_| bad_input(field, "not an RFC 3339 time"))
            })
            .transpose()
        };
        let (from_ms, to_ms) = (time("filter.from", filter.from)?, time("filter.to", filter.to)?);
        let before_seq = match &after {
            Some(c) => Some(c.parse::<u64>().map_err(|_| bad_input("after", "not a cursor of `auditLog`"))?),
            None => None,
        };
        consistent(app, req).await;
        let limit = first as usize;
        let query = AuditQuery { actor, action, from_ms, to_ms, before_seq, limit: limit + 1 };
        let mut rows =
            app.read_model.audit(&req.scope, &query).await.map_err(|e| internal("reading the audit trail", e))?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut conn = Connection::new(after.is_some(), has_next);
        conn.edges.extend(rows.into_iter().map(|r| Edge::new(r.seq.to_string(), AuditEntry::from(r))));
        Ok(conn)
    }
}

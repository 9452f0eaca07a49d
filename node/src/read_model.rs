//! Read models in SurrealDB: namespace `canopy`, database `system` for the tenant
//! directory and platform administrators, and one database `t_{tenant}` per tenant.
//! Only the projector writes here; queries only read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actors::domain::ids::is_safe_token;
use actors::domain::tenant::{Scope, TenantId, TenantStatus};
use anyhow::Context;
use secrecy::ExposeSecret;
use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use tokio::sync::RwLock;

use crate::config::Config;

pub mod backups;
pub mod records;
pub use records::{ModuleRow, RecordQuery};

pub const NAMESPACE: &str = "canopy";
const SYSTEM_TABLES: &str = include_str!("../../schemas/surreal/system.surql");
const ACCOUNT_TABLES: &str = include_str!("../../schemas/surreal/accounts.surql");
const ACCESS_TABLES: &str = include_str!("../../schemas/surreal/access.surql");
const AUDIT_TABLES: &str = include_str!("../../schemas/surreal/audit.surql");
const MODULE_TABLES: &str = include_str!("../../schemas/surreal/modules.surql");
const BACKUP_TABLES: &str = include_str!("../../schemas/surreal/backups.surql");

/// The database of a scope. Slugs hold only `[a-z0-9-]`, and `-` becomes `_`, so
/// the name is always a plain identifier and two slugs never share one.
pub fn db_name(scope: &Scope) -> String {
    match scope {
        Scope::Platform => "system".to_owned(),
        Scope::Tenant(t) => format!("t_{}", t.as_str().replace('-', "_")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("read model: {0}")]
pub struct ReadError(String);

fn read_err(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TenantRow {
    pub slug: String,
    pub name: String,
    pub owner_account_id: String,
    pub created_seq: u64,
    pub created_at: String,
    /// `active`, `suspended` or `deleted` (`TenantStatus`).
    #[serde(default)]
    pub status: Option<String>,
}

impl TenantRow {
    pub fn status(&self) -> TenantStatus {
        match self.status.as_deref() {
            Some("suspended") => TenantStatus::Suspended,
            Some("deleted") => TenantStatus::Deleted,
            _ => TenantStatus::Active,
        }
    }
}

/// The columns `TenantRow` reads.
const TENANT_COLUMNS: &str = "slug, name, owner_account_id, created_seq, created_at, status";

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserRow {
    pub account_id: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    pub owner: bool,
    pub seq: u64,
    pub created_at: String,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub locale: Option<String>,
}

/// How `users` orders a tenant's accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    CreatedAt,
    Email,
    Lastname,
}

/// A search of a tenant's users: case-insensitive substrings, a verified flag,
/// an order, and the position after which the page starts (the sort key as
/// compared, and the sequence that breaks ties).
#[derive(Debug, Clone)]
pub struct UserQuery {
    pub email: Option<String>,
    pub name: Option<String>,
    pub verified: Option<bool>,
    pub order: UserOrder,
    pub descending: bool,
    pub after: Option<(String, u64)>,
    pub limit: usize,
}

/// A custom role, as `roles` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRow {
    pub role_id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

/// An access token (times in Unix seconds). `secret_hash` is for the edge's
/// check only and is never shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRow {
    pub token_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
    pub secret_hash: String,
}

/// An invitation (times in Unix seconds); `email` only while pending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationRow {
    pub invitation_id: String,
    pub email: Option<String>,
    pub role: String,
    pub invited_by: String,
    pub invited_at: i64,
    pub expires_at: i64,
    pub status: String,
    pub accepted_by: Option<String>,
}

/// One record of an audit trail (`schemas/surreal/audit.surql`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: u64,
    pub at: String,
    pub action: String,
    pub aggregate: String,
    pub aggregate_id: String,
    pub actor_kind: Option<String>,
    pub actor_id: Option<String>,
    pub actor_tenant: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

/// A page of an audit trail, newest first: every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Unix milliseconds: from (inclusive) and to (exclusive).
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only records older than this stream sequence (the previous page's last).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// An open session, as `sessions` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub session_id: String,
    pub account_id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub user_agent: Option<String>,
}

/// An event the projector set aside because it can never be applied: where it is
/// in the log and why. It holds no value from the event's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The event's stream sequence.
    pub seq: u64,
    pub subject: String,
    /// The subject's tenant token (empty when the subject is not an event subject).
    pub tenant: String,
    /// The subject's event type (empty when the subject is not an event subject).
    pub event_type: String,
    pub reason: String,
}

/// A record id literal, `table:⟨key⟩`, for a key that is a safe subject token
/// (letters, digits, `-`, `_`): such a key can never close the brackets, so the
/// literal can go into query text. `None` for any other key.
pub fn record_id(table: &str, key: &str) -> Option<String> {
    is_safe_token(key).then(|| format!("{table}:⟨{key}⟩"))
}

/// Renames every `$name` in `sql` to `$<prefix>name`, whole names only.
fn prefix_vars(sql: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' && chars.peek().is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') {
            out.push_str(prefix);
        }
    }
    out
}

/// The statements of one database in a projector batch.
#[derive(Debug, Clone)]
pub struct DbChanges {
    pub db: String,
    pub statements: Vec<Statement>,
}

/// One statement of a projection transaction, with its own variables.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub vars: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_prefixed_as_whole_names() {
        assert_eq!(prefix_vars("SET a = $id, b = $idx, c = '$'", "s1_"), "SET a = $s1_id, b = $s1_idx, c = '$'");
    }

    async fn memory_model() -> ReadModel {
        let config = Config { surreal_url: Some("mem://".into()), ..Config::default() };
        ReadModel::connect(&config).await.unwrap()
    }

    fn user(id: &str, seq: u64) -> Statement {
        let vars = serde_json::json!({ "id": id, "seq": seq });
        Statement {
            sql: format!(
                "UPSERT user:⟨{id}⟩ CONTENT {{ account_id: $id, email: 'e', firstname: 'f', lastname: 'l', owner: false, seq: $seq, created_at: 't' }} RETURN NONE"
            ),
            vars: vars.as_object().unwrap().clone(),
        }
    }

    #[tokio::test]
    async fn one_batch_moves_every_database_and_the_checkpoint_together() {
        let rm = memory_model().await;
        let (a, b) =
            (Scope::Tenant(TenantId::parse("alpha").unwrap()), Scope::Tenant(TenantId::parse("beta").unwrap()));
        let ok = vec![
            DbChanges { db: db_name(&a), statements: vec![user("a1", 5)] },
            DbChanges { db: db_name(&b), statements: vec![user("b1", 6)] },
        ];
        rm.apply(ok, 7).await.unwrap();
        assert_eq!(rm.checkpoint().await.unwrap(), 7);
        assert!(rm.user(&a, "a1").await.unwrap().is_some() && rm.user(&b, "b1").await.unwrap().is_some());

        // The second database's statement breaks its schema (`seq` is an int): the
        // first database's change and the checkpoint must not move either.
        let mut broken = user("b2", 9);
        broken.vars.insert("seq".into(), "not a number".into());
        let bad = vec![
            DbChanges { db: db_name(&a), statements: vec![user("a2", 8)] },
            DbChanges { db: db_name(&b), statements: vec![broken] },
        ];
        assert!(rm.apply(bad, 9).await.is_err());
        assert_eq!(rm.checkpoint().await.unwrap(), 7);
        assert!(rm.user(&a, "a2").await.unwrap().is_none(), "a failed batch left a change behind");
        assert!(rm.user(&b, "b2").await.unwrap().is_none());
    }

    #[test]
    fn record_ids_are_literals_only_for_safe_keys() {
        assert_eq!(record_id("user", "0196f0c2-8a6e_7c1b").as_deref(), Some("user:⟨0196f0c2-8a6e_7c1b⟩"));
        for bad in ["", "a⟩; DELETE user; ⟨", "a b", "a`b", "a:b", "a.b", &"x".repeat(129)] {
            assert_eq!(record_id("user", bad), None, "{bad:?} must be refused");
        }
    }

    #[tokio::test]
    async fn a_user_is_read_by_its_record_id_and_an_unsafe_id_names_nobody() {
        let rm = memory_model().await;
        let t = Scope::Tenant(TenantId::parse("alpha").unwrap());
        rm.apply(vec![DbChanges { db: db_name(&t), statements: vec![user("a1", 5)] }], 5).await.unwrap();
        let row = rm.user(&t, "a1").await.unwrap().expect("a1 was projected");
        assert_eq!((row.account_id.as_str(), row.seq, row.owner), ("a1", 5, false));
        assert_eq!(rm.user(&t, "a2").await.unwrap(), None);
        // Another tenant's database does not hold it.
        let other = Scope::Tenant(TenantId::parse("beta").unwrap());
        assert_eq!(rm.user(&other, "a1").await.unwrap(), None);
        for bad in ["a1⟩; DELETE user; SELECT * FROM ⟨a1", "a1 ", ""] {
            assert_eq!(rm.user(&t, bad).await.unwrap(), None, "{bad:?}");
        }
        assert!(rm.user(&t, "a1").await.unwrap().is_some(), "nothing was deleted");
    }

    #[test]
    fn tenant_databases_are_plain_identifiers() {
        let t = Scope::Tenant(TenantId::parse("acme-corp").unwrap());
        assert_eq!(db_name(&t), "t_acme_corp");
        assert_eq!(db_name(&Scope::Platform), "system");
    }
}

#[derive(Clone)]
pub struct ReadModel {
    root: Surreal<Any>,
    /// One session per database: a session remembers its namespace and database,
    /// so concurrent queries for different tenants never cross.
    sessions: Arc<RwLock<HashMap<String, Surreal<Any>>>>,
    /// The projector's own session: its queries switch databases with `USE DB`,
    /// which would move any session they ran on.
    projector: Surreal<Any>,
    /// Reads sent to SurrealDB since start (`/metrics`).
    reads: Arc<AtomicU64>,
    /// What callers may do, as last read, per database (see `AccessCache`).
    access: Arc<AccessCache>,
}

/// The answers the edge needs on every request (an account's permissions, an
/// access token's row), cached per database. Each database has a generation
/// that the projector moves once it has committed an access event there, and
/// before it reports the event applied: an answer is used only while its
/// database is still at the generation read before the answer was queried, so
/// a permission change counts from the first request after read-your-writes.
#[derive(Default)]
struct AccessCache {
    generations: std::sync::RwLock<HashMap<String, u64>>,
    permissions: Answers<BTreeSet<String>>,
    tokens: Answers<Option<TokenRow>>,
}

/// Cached answers by (database, account or token id), with the generation
/// they were read at.
type Answers<V> = std::sync::RwLock<HashMap<(String, String), (u64, V)>>;

/// The most answers of each kind kept; past it the cache starts again empty.
const MAX_CACHED: usize = 100_000;

impl AccessCache {
    fn generation(&self, db: &str) -> u64 {
        self.generations.read().expect("never poisoned").get(db).copied().unwrap_or(0)
    }

    fn get<V: Clone>(map: &Answers<V>, key: &(String, String), generation: u64) -> Option<V> {
        map.read().expect("never poisoned").get(key).filter(|(g, _)| *g == generation).map(|(_, v)| v.clone())
    }

    fn put<V>(map: &Answers<V>, key: (String, String), generation: u64, v: V) {
        let mut m = map.write().expect("never poisoned");
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(key, (generation, v));
    }
}

impl ReadModel {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let url = match &config.surreal_url {
            Some(u) => u.clone(),
            None => {
                let dir = std::path::absolute(config.data_dir.join("surreal"))
                    .context("while resolving the SurrealDB path")?;
                format!("surrealkv://{}", dir.display())
            }
        };
        let root = surrealdb::engine::any::connect(url.as_str())
            .await
            .with_context(|| format!("while opening SurrealDB at {}", url.split('@').next_back().unwrap_or("")))?;
        if let (Some(user), Some(pass)) = (&config.surreal_user, &config.surreal_password) {
            root.signin(surrealdb::opt::auth::Root {
                username: user.clone(),
                password: pass.expose_secret().to_owned(),
            })
            .await
            .context("while signing in to SurrealDB")?;
        }
        let projector = root.clone();
        projector.use_ns(NAMESPACE).use_db("system").await.context("while opening the projector session")?;
        let rm = Self { root, sessions: Arc::default(), projector, reads: Arc::default(), access: Arc::default() };
        rm.session("system").await.context("while preparing the system database")?;
        Ok(rm)
    }

    async fn session(&self, db: &str) -> Result<Surreal<Any>, ReadError> {
        if let Some(s) = self.sessions.read().await.get(db) {
            return Ok(s.clone());
        }
        let mut sessions = self.sessions.write().await;
        if let Some(s) = sessions.get(db) {
            return Ok(s.clone());
        }
        let s = self.root.clone();
        s.use_ns(NAMESPACE).use_db(db).await.map_err(read_err)?;
        let tables = if db == "system" {
            format!("{SYSTEM_TABLES}\n{ACCOUNT_TABLES}\n{AUDIT_TABLES}")
        } else {
            format!("{ACCOUNT_TABLES}\n{ACCESS_TABLES}\n{AUDIT_TABLES}\n{MODULE_TABLES}\n{BACKUP_TABLES}")
        };
        s.query(tables).await.and_then(|r| r.check()).map_err(read_err)?;
        sessions.insert(db.to_owned(), s.clone());
        Ok(s)
    }

    async fn select<T: DeserializeOwned>(
        &self,
        db: &str,
        sql: &str,
        vars: serde_json::Value,
    ) -> Result<Vec<T>, ReadError> {
        let s = self.session(db).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut res = s.query(sql).bind(vars).await.map_err(read_err)?;
        let rows: Vec<serde_json::Value> = res.take(0).map_err(read_err)?;
        rows.into_iter().map(|r| serde_json::from_value(r).map_err(read_err)).collect()
    }

    /// How many reads were sent to SurrealDB since start.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub async fn health(&self) -> bool {
        self.root.health().await.is_ok()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, ReadError> {
        self.select("system", &format!("SELECT {TENANT_COLUMNS} FROM tenant ORDER BY slug"), serde_json::json!({}))
            .await
    }

    /// A page of `scope`'s audit trail, newest first.
    pub async fn audit(&self, scope: &Scope, q: &AuditQuery) -> Result<Vec<AuditRow>, ReadError> {
        let mut sql = String::from(
            "SELECT seq, at, action, aggregate, aggregate_id, actor_kind, actor_id, actor_tenant, address, user_agent FROM audit WHERE true",
        );
        for (present, clause) in [
            (q.actor.is_some(), " AND actor_id = $actor"),
            (q.action.is_some(), " AND action = $action"),
            (q.from_ms.is_some(), " AND ts >= $from"),
            (q.to_ms.is_some(), " AND ts < $to"),
            (q.before_seq.is_some(), " AND seq < $before"),
        ] {
            if present {
                sql.push_str(clause);
            }
        }
        sql.push_str(" ORDER BY seq DESC LIMIT $limit");
        self.select(
            &db_name(scope),
            &sql,
            serde_json::json!({
                "actor": q.actor, "action": q.action, "from": q.from_ms, "to": q.to_ms,
                "before": q.before_seq, "limit": q.limit,
            }),
        )
        .await
    }

    /// The slugs of deleted tenants.
    pub async fn deleted_tenants(&self) -> Result<Vec<String>, ReadError> {
        #[derive(Deserialize)]
        struct Slug {
            slug: String,
        }
        let rows: Vec<Slug> = self
            .select(
                "system",
                "SELECT slug FROM tenant WHERE status = $s",
                serde_json::json!({ "s": TenantStatus::Deleted.as_str() }),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.slug).collect())
    }

    pub async fn tenant(&self, slug: &TenantId) -> Result<Option<TenantRow>, ReadError> {
        let rows = self
            .select(
                "system",
                &format!("SELECT {TENANT_COLUMNS} FROM tenant WHERE slug = $slug"),
                serde_json::json!({ "slug": slug.as_str() }),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// One account, read by its record id (`user:⟨account_id⟩`, as the projector
    /// writes it): a direct fetch costs SurrealDB about half of a `WHERE` on the
    /// unique index, which has to be planned on every call, and every mutation
    /// answer reads one. An id that is not a safe token names no account.
    pub async fn user(&self, scope: &Scope, account_id: &str) -> Result<Option<UserRow>, ReadError> {
        let Some(id) = record_id("user", account_id) else { return Ok(None) };
        let rows = self.select(&db_name(scope), &format!("SELECT * FROM {id}"), serde_json::json!({})).await?;
        Ok(rows.into_iter().next())
    }

    /// A tenant's custom roles, by name.
    pub async fn roles(&self, scope: &Scope) -> Result<Vec<RoleRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT role_id, name, description, permissions FROM role ORDER BY name",
            serde_json::json!({}),
        )
        .await
    }

    /// The roles an account holds: its assignment, else `owner` for the
    /// tenant's creator (tenants from before roles) and `member` for anyone.
    pub async fn roles_of(&self, scope: &Scope, account_id: &str) -> Result<Vec<String>, ReadError> {
        #[derive(Deserialize)]
        struct Held {
            roles: Vec<String>,
        }
        let Some(id) = record_id("member_role", account_id) else { return Ok(vec!["member".into()]) };
        let held: Vec<Held> =
            self.select(&db_name(scope), &format!("SELECT roles FROM {id}"), serde_json::json!({})).await?;
        if let Some(h) = held.into_iter().next() {
            return Ok(h.roles);
        }
        let owner = self.user(scope, account_id).await?.is_some_and(|u| u.owner);
        Ok(vec![if owner { "owner" } else { "member" }.into()])
    }

    /// Tells the cache that the projector has committed access events in
    /// `scope`'s database: answers read before no longer count.
    pub fn access_changed(&self, scope: &Scope) {
        *self.access.generations.write().expect("never poisoned").entry(db_name(scope)).or_default() += 1;
    }

    /// What an account may do in `scope` now (cached while the scope's access is unchanged).
    pub async fn permissions_of(&self, scope: &Scope, account_id: &str) -> Result<BTreeSet<String>, ReadError> {
        self.cached(&self.access.permissions, scope, account_id, self.read_permissions(scope, account_id)).await
    }

    /// An answer about `id` in `scope`, from the cache while the scope's access
    /// generation is the one it was read at; else `read` (which runs only
    /// after the generation is taken, so a change during it is not missed).
    async fn cached<V: Clone>(
        &self,
        answers: &Answers<V>,
        scope: &Scope,
        id: &str,
        read: impl std::future::Future<Output = Result<V, ReadError>>,
    ) -> Result<V, ReadError> {
        let key = (db_name(scope), id.to_owned());
        let generation = self.access.generation(&key.0);
        if let Some(hit) = AccessCache::get(answers, &key, generation) {
            return Ok(hit);
        }
        let value = read.await?;
        AccessCache::put(answers, key, generation, value.clone());
        Ok(value)
    }

    /// What an account may do in its tenant: the union of its roles' permissions.
    async fn read_permissions(&self, scope: &Scope, account_id: &str) -> Result<BTreeSet<String>, ReadError> {
        let roles = self.roles_of(scope, account_id).await?;
        let mut out = BTreeSet::new();
        let mut custom = false;
        for r in &roles {
            match actors::domain::access::builtin_permissions(r) {
                Some(ps) => out.extend(ps.iter().map(|p| p.as_str().to_owned())),
                None => custom = true,
            }
        }
        if custom {
            for role in self.roles(scope).await? {
                if roles.contains(&role.role_id) {
                    out.extend(role.permissions);
                }
            }
        }
        Ok(out)
    }

    /// A tenant's invitations, newest first (at most 500).
    pub async fn invitations(&self, scope: &Scope) -> Result<Vec<InvitationRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT * FROM invitation ORDER BY invited_at DESC, invitation_id LIMIT 500",
            serde_json::json!({}),
        )
        .await
    }

    /// One invitation of a tenant.
    pub async fn invitation(&self, scope: &Scope, invitation_id: &str) -> Result<Option<InvitationRow>, ReadError> {
        let Some(id) = record_id("invitation", invitation_id) else { return Ok(None) };
        let rows = self.select(&db_name(scope), &format!("SELECT * FROM {id}"), serde_json::json!({})).await?;
        Ok(rows.into_iter().next())
    }

    /// One access token of a tenant.
    pub async fn access_token(&self, scope: &Scope, token_id: &str) -> Result<Option<TokenRow>, ReadError> {
        let Some(id) = record_id("access_token", token_id) else { return Ok(None) };
        let read = async {
            let rows = self.select(&db_name(scope), &format!("SELECT * FROM {id}"), serde_json::json!({})).await?;
            Ok(rows.into_iter().next())
        };
        self.cached(&self.access.tokens, scope, token_id, read).await
    }

    /// A tenant's access tokens that have not been revoked, newest first
    /// (expired ones included, so that their holders see why they fail).
    pub async fn access_tokens(&self, scope: &Scope) -> Result<Vec<TokenRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT * FROM access_token WHERE revoked = false ORDER BY created_at DESC, token_id LIMIT 500",
            serde_json::json!({}),
        )
        .await
    }

    /// What a token may do now: its scopes, as far as its creator still holds them.
    pub async fn token_permissions(&self, scope: &Scope, token: &TokenRow) -> Result<BTreeSet<String>, ReadError> {
        let held = self.permissions_of(scope, &token.created_by).await?;
        Ok(token.scopes.iter().filter(|p| held.contains(*p)).cloned().collect())
    }

    /// An account's open sessions, most recently used first.
    pub async fn sessions(&self, scope: &Scope, account_id: &str) -> Result<Vec<SessionRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT session_id, account_id, created_at, last_used_at, user_agent FROM session WHERE account_id = $account ORDER BY last_used_at DESC, session_id LIMIT 200",
            serde_json::json!({ "account": account_id }),
        )
        .await
    }

    /// A page of a tenant's users matching `q`, and how many match in all.
    pub async fn search_users(&self, scope: &Scope, q: &UserQuery) -> Result<(Vec<UserRow>, u64), ReadError> {
        // Only fixed fragments reach the query text; every value is a variable.
        let mut conditions = Vec::new();
        if q.email.is_some() {
            conditions.push("string::lowercase(email) CONTAINS $email");
        }
        if q.name.is_some() {
            conditions.push(
                "(string::lowercase(firstname) CONTAINS $name OR string::lowercase(lastname) CONTAINS $name OR string::lowercase(string::concat(firstname, ' ', lastname)) CONTAINS $name)",
            );
        }
        if q.verified.is_some() {
            conditions.push("email_verified = $verified");
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let (field, cmp, dir) = match (q.order, q.descending) {
            (UserOrder::CreatedAt, false) => ("seq", ">", "ASC"),
            (UserOrder::CreatedAt, true) => ("seq", "<", "DESC"),
            (UserOrder::Email, false) => ("string::lowercase(email)", ">", "ASC"),
            (UserOrder::Email, true) => ("string::lowercase(email)", "<", "DESC"),
            (UserOrder::Lastname, false) => ("string::lowercase(lastname)", ">", "ASC"),
            (UserOrder::Lastname, true) => ("string::lowercase(lastname)", "<", "DESC"),
        };
        // Keyset pagination: after the cursor's (sort key, seq), in the page's order.
        let after = match &q.after {
            None => String::new(),
            Some(_) if field == "seq" => format!("seq {cmp} $after_seq"),
            Some(_) => format!("({field} {cmp} $after_key OR ({field} = $after_key AND seq {cmp} $after_seq))"),
        };
        let page_filter = match (filter.is_empty(), after.is_empty()) {
            (_, true) => filter.clone(),
            (true, false) => format!("WHERE {after}"),
            (false, false) => format!("{filter} AND {after}"),
        };
        let vars = serde_json::json!({
            "email": q.email.as_deref().map(str::to_lowercase),
            "name": q.name.as_deref().map(str::to_lowercase),
            "verified": q.verified,
            "after_key": q.after.as_ref().map(|(k, _)| k.clone()),
            "after_seq": q.after.as_ref().map(|(_, s)| *s),
            "limit": q.limit,
        });
        let rows = self
            .select(
                &db_name(scope),
                &format!(
                    "SELECT account_id, email, firstname, lastname, owner, seq, created_at, email_verified, locale, {field} AS sort_key FROM user {page_filter} ORDER BY sort_key {dir}, seq {dir} LIMIT $limit"
                ),
                vars.clone(),
            )
            .await?;
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let total: Vec<Count> =
            self.select(&db_name(scope), &format!("SELECT count() FROM user {filter} GROUP ALL"), vars).await?;
        Ok((rows, total.first().map_or(0, |c| c.count)))
    }

    /// Up to `limit` users registered after `after_seq`, oldest first.
    pub async fn users(&self, scope: &Scope, after_seq: u64, limit: usize) -> Result<Vec<UserRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT account_id, email, firstname, lastname, owner, seq, created_at, email_verified, locale FROM user WHERE seq > $after ORDER BY seq LIMIT $limit",
            serde_json::json!({ "after": after_seq, "limit": limit }),
        )
        .await
    }

    /// The events the projector set aside, in the log's order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ReadError> {
        self.select(
            "system",
            "SELECT seq, subject, tenant, event_type, reason FROM projection_dead_letter ORDER BY seq",
            serde_json::json!({}),
        )
        .await
    }

    /// Runs `sql` on database `db` and panics if it fails: lets a test put
    /// SurrealDB in a state that the projector's statements never produce.
    #[cfg(test)]
    pub(crate) async fn execute_for_tests(&self, db: &str, sql: &str) {
        let s = self.session(db).await.unwrap();
        s.query(sql).await.and_then(|r| r.check()).unwrap();
    }

    /// The projector's position: the last stream sequence in the read models.
    pub async fn checkpoint(&self) -> Result<u64, ReadError> {
        #[derive(Deserialize)]
        struct Cp {
            seq: u64,
        }
        let rows: Vec<Cp> =
            self.select("system", "SELECT seq FROM checkpoint:projector", serde_json::json!({})).await?;
        Ok(rows.first().map_or(0, |c| c.seq))
    }

    /// Applies every database's statements and moves the projector's checkpoint to
    /// `seq`, in one transaction: the read models and the checkpoint move together,
    /// or nothing does. One query and one checkpoint write per projector batch,
    /// however many tenants it touches: per-query and per-database overhead was
    /// most of the projector's cost when a batch spread one event each over many
    /// tenant databases.
    pub async fn apply(&self, changes: Vec<DbChanges>, seq: u64) -> Result<(), ReadError> {
        let mut sql = String::from("BEGIN TRANSACTION;\n");
        let mut vars = serde_json::Map::new();
        let mut n = 0;
        for change in changes {
            // Defines the database's tables on first use (cached afterwards).
            self.session(&change.db).await?;
            // Names are made by `db_name`: plain identifiers, safe to splice.
            sql.push_str(&format!("USE DB {};\n", change.db));
            for st in change.statements {
                // Each statement's variables get a unique prefix inside the
                // transaction. A statement without variables (a module's
                // migration) runs verbatim: its `$` names are its own.
                if st.vars.is_empty() {
                    sql.push_str(&st.sql);
                } else {
                    sql.push_str(&prefix_vars(&st.sql, &format!("s{n}_")));
                }
                for (k, v) in st.vars {
                    vars.insert(format!("s{n}_{k}"), v);
                }
                sql.push_str(";\n");
                n += 1;
            }
        }
        sql.push_str("USE DB system;\nUPSERT checkpoint:projector SET seq = $checkpoint_seq;\nCOMMIT TRANSACTION;");
        vars.insert("checkpoint_seq".into(), seq.into());
        self.projector
            .query(sql)
            .bind(serde_json::Value::Object(vars))
            .await
            .and_then(|r| r.check())
            .map_err(read_err)?;
        Ok(())
    }

    /// Every database of the namespace, read from SurrealDB itself.
    pub async fn databases(&self) -> Result<Vec<String>, ReadError> {
        let s = self.session("system").await?;
        let mut res = s.query("INFO FOR NS").await.map_err(read_err)?;
        let info: Option<serde_json::Value> = res.take(0).map_err(read_err)?;
        let mut names: Vec<String> = info
            .and_then(|i| i.get("databases").and_then(|d| d.as_object()).map(|d| d.keys().cloned().collect()))
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// Removes every read-model database, for a rebuild from the log.
    pub async fn drop_all(&self) -> Result<(), ReadError> {
        let dbs = self.databases().await?;
        let mut sessions = self.sessions.write().await;
        sessions.clear();
        let s = self.root.clone();
        s.use_ns(NAMESPACE).await.map_err(read_err)?;
        for db in dbs {
            // Names come from SurrealDB and were made by `db_name`: plain identifiers.
            s.query(format!("REMOVE DATABASE IF EXISTS {db}")).await.and_then(|r| r.check()).map_err(read_err)?;
        }
        Ok(())
    }

    /// All read-model content, ordered, for comparing two builds.
    pub async fn dump(&self) -> Result<serde_json::Value, ReadError> {
        let mut out = serde_json::Map::new();
        for db in self.databases().await? {
            let tenants: Vec<serde_json::Value> = if db == "system" {
                self.select(&db, &format!("SELECT {TENANT_COLUMNS} FROM tenant ORDER BY slug"), serde_json::json!({}))
                    .await?
            } else {
                Vec::new()
            };
            let users: Vec<serde_json::Value> = self
                .select(
                    &db,
                    "SELECT account_id, email, firstname, lastname, owner, seq, created_at, email_verified, locale FROM user ORDER BY seq",
                    serde_json::json!({}),
                )
                .await?;
            let sessions: Vec<serde_json::Value> = self
                .select(
                    &db,
                    "SELECT session_id, account_id, created_at, last_used_at, user_agent, seq FROM session ORDER BY session_id",
                    serde_json::json!({}),
                )
                .await?;
            // Access control belongs to tenants: `system` has no such tables.
            let (roles, assignments): (Vec<serde_json::Value>, Vec<serde_json::Value>) = if db == "system" {
                (Vec::new(), Vec::new())
            } else {
                let roles = "SELECT role_id, name, description, permissions FROM role ORDER BY role_id";
                let assignments = "SELECT account_id, roles FROM member_role ORDER BY account_id";
                (
                    self.select(&db, roles, serde_json::json!({})).await?,
                    self.select(&db, assignments, serde_json::json!({})).await?,
                )
            };
            let mut content = serde_json::json!({
                "tenant": tenants, "user": users, "session": sessions, "role": roles, "member_role": assignments,
            });
            if db == "system" {
                content["dead_letter"] = serde_json::to_value(self.dead_letters().await?).map_err(read_err)?;
            }
            out.insert(db, content);
        }
        Ok(serde_json::Value::Object(out))
    }
}

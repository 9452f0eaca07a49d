//! API access tokens at the edge: a request carrying `cnp_…` (as
//! `Authorization: Bearer` or `x-tenant-key`) is checked against the tenant's
//! read model on every request, so a revocation, an expiry or a change to the
//! creator's roles counts from the next request on. When a token was last used
//! is kept in the KV bucket `token_usage`, written at most once a minute per
//! token and node: it is an observation, not a decision, so it stays out of the
//! event log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use actors::domain::access_token::{TokenId, TokenSecret};
use actors::domain::tenant::Scope;
use async_nats::jetstream::{self, kv};

use crate::read_model::ReadModel;

/// The bucket's name.
pub const USAGE_BUCKET: &str = "token_usage";
/// How often one node records a token's use, at most.
const TOUCH_EVERY_SECS: i64 = 60;

/// A request's caller when it came with an access token.
#[derive(Debug, Clone)]
pub struct TokenCaller {
    pub token_id: TokenId,
    /// What the token may do now: its scopes, as far as its creator still holds them.
    pub permissions: BTreeSet<String>,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
}

/// Why a presented token does not authenticate; each is `UNAUTHENTICATED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not of the form `cnp_{id}_{secret}`.
    Malformed,
    /// Unknown in this tenant (another tenant's included), revoked, or the wrong secret.
    Unknown,
    Expired,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Refused::Malformed, Refused::Unknown, Refused::Expired];

    pub fn message(self) -> &'static str {
        match self {
            Refused::Malformed => "the access token is not valid",
            Refused::Unknown => "the access token is not valid for this tenant, or was revoked",
            Refused::Expired => "the access token has expired",
        }
    }
}

/// Checks `raw` as an access token of `scope`.
pub async fn authenticate(
    read_model: &ReadModel,
    scope: &Scope,
    raw: &str,
) -> anyhow::Result<Result<TokenCaller, Refused>> {
    let Ok(secret) = TokenSecret::parse(raw) else { return Ok(Err(Refused::Malformed)) };
    let Some(row) = read_model.access_token(scope, secret.id().as_str()).await? else {
        return Ok(Err(Refused::Unknown));
    };
    // The hash is compared before anything about the token is told.
    if row.revoked || !secret.matches(&row.secret_hash) {
        return Ok(Err(Refused::Unknown));
    }
    if row.expires_at <= time::OffsetDateTime::now_utc().unix_timestamp() {
        return Ok(Err(Refused::Expired));
    }
    let permissions = read_model.token_permissions(scope, &row).await?;
    Ok(Ok(TokenCaller { token_id: secret.id().clone(), permissions, expires_at: row.expires_at }))
}

/// When tokens were last used.
pub struct TokenUsage {
    kv: kv::Store,
    /// When this node last wrote each token's use.
    written: Mutex<HashMap<String, i64>>,
}

impl TokenUsage {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> anyhow::Result<Self> {
        let kv = crate::nats::bucket(
            js,
            kv::Config {
                bucket: USAGE_BUCKET.into(),
                description: "when each access token was last used (Unix seconds), per tenant".into(),
                history: 1,
                // A token lives a year and a day at most; its last use a little longer.
                max_age: Duration::from_secs(400 * 24 * 3600),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self { kv, written: Mutex::new(HashMap::new()) })
    }

    fn key(scope: &Scope, token_id: &str) -> String {
        format!("{}.{token_id}", scope.token())
    }

    /// Records a use now, unless this node recorded one in the last minute: at
    /// most one request per token and minute waits for the write. A failed
    /// write is logged, and the request goes on.
    pub async fn touch(&self, scope: &Scope, token_id: &TokenId) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let key = Self::key(scope, token_id.as_str());
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if written.get(&key).is_some_and(|at| now - at < TOUCH_EVERY_SECS) {
                return;
            }
            // Bounded: a node that saw very many tokens starts over.
            if written.len() > 100_000 {
                written.clear();
            }
            written.insert(key.clone(), now);
        }
        if let Err(e) = self.kv.put(key, now.to_string().into()).await {
            tracing::warn!(error = %e, "recording an access token's use");
        }
    }

    /// When a token was last used (Unix seconds), if it was.
    pub async fn last_used(&self, scope: &Scope, token_id: &str) -> Option<i64> {
        match self.kv.get(Self::key(scope, token_id)).await {
            Ok(Some(v)) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading an access token's last use");
                None
            }
        }
    }
}

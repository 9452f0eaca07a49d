//! Who may connect as a push client: the node's answer to nats-server's auth
//! callout (`nats/callout.rs`). A client gives its tenant's slug as the user
//! name and a Canopy token as the password: an account's access token (a JWT
//! from a sign-in) or an API access token (`cnp_…`, for example one made by
//! `issuePushCredentials`). The two are checked as the headers
//! `Authorization: Bearer …` and `x-tenant-id` of a request would be
//! (`edge::resolve`): it is let in when the tenant is active, the token is
//! valid for that tenant now (not expired, not revoked, its session not
//! ended) and it carries `subscribe_messages`. It gets a user of account
//! `PUSH` that may subscribe to `push.{tenant}.>` only and publish nothing,
//! and its connection ends when its token expires.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use actors::domain::tenant::TenantId;
use poem::http::{HeaderMap, HeaderValue};

use crate::App;
use crate::edge::resolve_given;
use crate::graphql::permissions::refusal;
use crate::nats::callout::{Decide, Grant, Presented};

/// The permission a push client needs.
pub const SUBSCRIBE_MESSAGES: &str = "subscribe_messages";

/// The subjects a client of `tenant` may subscribe to: its pushes, and the
/// tenant's own level, which an MQTT subscription to `push/{tenant}/#` also
/// takes (`#` matches its parent level).
pub fn client_subjects(tenant: &TenantId) -> Vec<String> {
    vec![format!("push.{}.>", tenant.as_str()), format!("push.{}", tenant.as_str())]
}

pub struct PushGate {
    pub app: Arc<App>,
}

impl Decide for PushGate {
    async fn decide(&self, presented: Presented) -> Result<Grant, String> {
        // The user name is the tenant: parsed first, so that a name no header
        // can carry is refused rather than left to the token to decide.
        let tenant = TenantId::parse(&presented.user).map_err(|_| "the user name must be a tenant slug".to_owned())?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", presented.password.trim()))
            .map_err(|_| "the password is not a token".to_owned())?;
        let mut headers = HeaderMap::new();
        headers.insert("authorization", bearer);
        headers.insert("x-tenant-id", HeaderValue::from_str(tenant.as_str()).map_err(|e| e.to_string())?);
        let client = presented.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        // Checked as a request with these headers would be: the token, its
        // session, its tenant, the tenant's status.
        let req = resolve_given(&self.app, &headers, client).await?;
        match refusal(&self.app, &req, SUBSCRIBE_MESSAGES).await {
            Ok(None) => {}
            Ok(Some((_, message))) => return Err(message),
            Err(e) => return Err(e.message),
        }
        let who = match (&req.principal, &req.token) {
            (Some(p), _) => format!("account:{}", p.sub),
            (None, Some(t)) => format!("token:{}", t.token_id),
            (None, None) => return Err("sign in first".to_owned()),
        };
        Ok(Grant {
            name: format!("{}/{who}/{:?}", tenant.as_str(), presented.transport).to_lowercase(),
            subscribe: client_subjects(&tenant),
            expires: req.expires_at(),
        })
    }
}

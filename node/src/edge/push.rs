//! Who may connect as a push client: the node's answer to nats-server's auth
//! callout (`nats/callout.rs`). A client gives its tenant's slug as the user
//! name and a Canopy token as the password: an account's access token (a JWT
//! from a sign-in) or an API access token (`cnp_…`, for example one made by
//! `issuePushCredentials`). It is let in when the tenant is active, the token
//! is valid for that tenant now (not expired, not revoked, its session not
//! ended) and it carries `subscribe_messages`. It gets a user of account
//! `PUSH` that may subscribe to `push.{tenant}.>` only and publish nothing,
//! and its connection ends when its token expires.

use std::sync::Arc;

use actors::domain::access_token::TokenSecret;
use actors::domain::tenant::{Scope, TenantId};

use crate::App;
use crate::edge::tokens;
use crate::nats::callout::{Decide, Grant, Presented};
use actors::domain::tenant::TenantStatus;

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
        let tenant = TenantId::parse(&presented.user).map_err(|_| "the user name must be a tenant slug".to_owned())?;
        match self.app.tenant_status(&tenant).await {
            Ok(Some(TenantStatus::Active)) => {}
            Ok(_) => return Err(format!("tenant {} is not active", tenant.as_str())),
            Err(e) => return Err(format!("the tenant could not be checked: {e}")),
        }
        let scope = Scope::Tenant(tenant.clone());
        let password = presented.password.trim();
        let (who, expires) = if TokenSecret::is_meant(password) {
            let caller = match tokens::authenticate(&self.app.read_model, &scope, password).await {
                Ok(Ok(c)) => c,
                Ok(Err(refused)) => return Err(refused.message().to_owned()),
                Err(e) => return Err(format!("the access token could not be checked: {e}")),
            };
            if !caller.permissions.contains(SUBSCRIBE_MESSAGES) {
                return Err(format!("the access token lacks {SUBSCRIBE_MESSAGES}"));
            }
            self.app.token_usage.touch(&scope, &caller.token_id).await;
            (format!("token:{}", caller.token_id), caller.expires_at)
        } else {
            let claims = self.app.tokens.verify(password).map_err(|_| "the token is not valid".to_owned())?;
            if claims.tenant != tenant.as_str() {
                return Err("the token was issued for another tenant".to_owned());
            }
            if claims.sid.as_deref().is_some_and(|sid| self.app.revocations.is_revoked(sid)) {
                return Err("the session has ended".to_owned());
            }
            let held = self
                .app
                .read_model
                .permissions_of(&scope, &claims.sub)
                .await
                .map_err(|e| format!("the account's permissions could not be read: {e}"))?;
            if !held.contains(SUBSCRIBE_MESSAGES) {
                return Err(format!("the account lacks {SUBSCRIBE_MESSAGES}"));
            }
            (format!("account:{}", claims.sub), claims.exp)
        };
        Ok(Grant {
            name: format!("{}/{who}/{:?}", tenant.as_str(), presented.transport).to_lowercase(),
            subscribe: client_subjects(&tenant),
            expires: Some(expires),
        })
    }
}

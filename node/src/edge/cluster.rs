//! `GET /cluster`: the live members and who owns which tenants, for a
//! platform administrator. Ownership is read from the `placement` bucket, the
//! record every node acts on; leases of nodes no longer live are shown apart,
//! lapsing.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{IntoResponse, Request, Response, handler};
use serde_json::json;

use super::{client_address, refuse_in, resolve};
use crate::App;

/// At most this many tenants are listed; the counts are always whole.
const LISTED: usize = 10_000;

#[handler]
pub async fn cluster(req: &Request, Data(app): Data<&Arc<App>>) -> Response {
    let ctx = match resolve(app, req.headers(), client_address(app, req), None).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    if ctx.principal.is_none() {
        return refuse_in(
            &ctx.locale,
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "sign in as a platform administrator",
        );
    }
    if crate::graphql::request::platform_admin(&ctx).is_err() {
        return refuse_in(&ctx.locale, StatusCode::FORBIDDEN, "FORBIDDEN", "only a platform administrator may do this");
    }
    let (leases, more) = match app.placement.all(LISTED).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "reading the placement bucket");
            return refuse_in(
                &ctx.locale,
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the placement bucket cannot be read now",
            );
        }
    };
    let mut owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tenant, node) in leases {
        owned.entry(node).or_default().push(tenant);
    }
    let membership = app.placement.membership();
    let members: Vec<_> = membership
        .live()
        .into_iter()
        .map(|m| {
            let tenants = owned.remove(&m.id).unwrap_or_default();
            json!({ "id": m.id, "version": m.version, "http": m.http, "owns": tenants.len(), "tenants": tenants })
        })
        .collect();
    let lapsing: Vec<_> = owned
        .into_iter()
        .map(|(node, tenants)| json!({ "id": node, "owns": tenants.len(), "tenants": tenants }))
        .collect();
    let body = json!({
        "node": membership.me().id,
        "deadAfterSecs": membership.dead_after().as_secs(),
        "members": members,
        "lapsing": lapsing,
        "truncated": more,
    });
    (StatusCode::OK, Json(body)).into_response()
}

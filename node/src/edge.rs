//! The HTTP edge: health and readiness, the JWKS, GraphiQL, and the GraphQL
//! endpoint, which resolves the tenant, authenticates the caller and bounds the body
//! before anything is executed.

pub mod auth;
pub mod cluster;
pub mod feed;
pub mod i18n;
pub mod limits;
pub mod push;
pub mod records;
pub mod sessions;
pub mod tenants;
pub mod tokens;

use std::sync::Arc;

use actors::domain::account::Locale;
use actors::domain::tenant::{PLATFORM_TOKEN, Scope, TenantId, TenantStatus};
use async_graphql::http::GraphiQLSource;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Html, Json, Path};
use poem::{Body, EndpointExt, IntoResponse, Request, Response, Route, get, handler};

use secrecy::ExposeSecret;

use crate::App;
use crate::edge::auth::TokenError;
use crate::graphql::request::RequestCtx;
use actors::domain::access_token::TokenSecret;

/// The largest request body the GraphQL endpoint reads.
pub const MAX_BODY: usize = 1024 * 1024;

pub fn routes(app: Arc<App>) -> impl poem::Endpoint {
    Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/.well-known/jwks.json", get(jwks))
        .at("/metrics", get(metrics))
        .at("/cluster", get(cluster::cluster))
        .at("/graphql", get(graphql_get).post(graphql_root))
        .at("/t/:tenant/graphql", get(graphiql).post(graphql_tenant))
        .at("/migrate", poem::post(records::migrate_all))
        .at("/t/:tenant/migrate", poem::post(records::migrate_tenant))
        .at("/t/:tenant/migrate/force", poem::post(records::migrate_force))
        .at("/t/:tenant/migrate/seed", poem::post(records::migrate_seed))
        .at("/t/:tenant/migrate/deseed", poem::post(records::migrate_deseed))
        .at("/t/:tenant/:module/:version/graphql", get(records::module_graphql).post(records::module_graphql))
        .at("/t/:tenant/:module/:version/:table", get(records::on_table).post(records::on_table))
        .at(
            "/t/:tenant/:module/:version/:table/:id",
            get(records::on_record).patch(records::on_record).delete(records::on_record),
        )
        .data(app)
}

/// `refuse` in the caller's language.
pub(crate) fn refuse_in(locale: &Locale, status: StatusCode, code: &str, message: &str) -> Response {
    match i18n::localize(message, locale) {
        Some(translated) => refuse(status, code, &translated),
        None => refuse(status, code, message),
    }
}

/// An error answered before GraphQL runs, in the GraphQL response shape.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(Data(app): Data<&Arc<App>>) -> Response {
    let checks = app.readiness().await;
    let ready = checks.values().all(|v| *v);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

/// A Prometheus summary of a lag window: its p50 and p99 in seconds, and its count.
fn summary(out: &mut String, name: &str, help: &str, lag: Option<(std::time::Duration, std::time::Duration, usize)>) {
    let (p50, p99, n) = lag.map_or((0.0, 0.0, 0), |(a, b, n)| (a.as_secs_f64(), b.as_secs_f64(), n));
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} summary\n"));
    out.push_str(&format!("{name}{{quantile=\"0.5\"}} {p50}\n{name}{{quantile=\"0.99\"}} {p99}\n{name}_count {n}\n"));
}

/// One metric family: its help and type lines, then one sample per label set
/// (`""` for none).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, value) in samples {
        out.push_str(&format!("{name}{labels} {value}\n"));
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    bearer(headers).ok().flatten().is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

/// A few gauges in the Prometheus text format; with `metrics_token` set, only
/// for requests that carry it.
#[handler]
async fn metrics(req: &Request, Data(app): Data<&Arc<App>>) -> Response {
    if let Some(token) = &app.config.metrics_token
        && !bearer_matches(req.headers(), token.expose_secret())
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "/metrics needs `Authorization: Bearer <metrics_token>`",
        );
    }
    metrics_text(app).await.into_response()
}

async fn metrics_text(app: &App) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "canopy_projection_applied_seq",
        "gauge",
        "Stream sequence of the last event in the read models.",
        &[("", app.progress.applied())],
    );
    summary(
        &mut out,
        "canopy_projection_lag_seconds",
        "From stored in JetStream to committed in SurrealDB, last 5 s.",
        app.progress.lag(),
    );
    summary(
        &mut out,
        "canopy_projection_ack_lag_seconds",
        "From this node's append ack to committed in SurrealDB (read-your-writes wait), last 5 s.",
        app.progress.ack_lag(),
    );
    let (batches, events) = app.progress.counts();
    family(
        &mut out,
        "canopy_projection_batches_total",
        "counter",
        "Projector batches committed (one transaction each).",
        &[("", batches)],
    );
    family(
        &mut out,
        "canopy_projection_events_total",
        "counter",
        "Events in the committed projector batches.",
        &[("", events)],
    );
    family(
        &mut out,
        "canopy_projection_dead_letters_total",
        "counter",
        "Events the projector set aside because they can never be applied, since start.",
        &[("", app.progress.dead_letters())],
    );
    family(
        &mut out,
        "canopy_read_model_reads_total",
        "counter",
        "Queries that read the read models, since start.",
        &[("", app.read_model.reads())],
    );
    let live_trees =
        match app.node.call(actors::tree::NodeMsg::LiveTrees, Some(std::time::Duration::from_secs(2))).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n as u64,
            _ => 0,
        };
    family(
        &mut out,
        "canopy_live_trees",
        "gauge",
        "Tenant trees running on this node (at most max_live_trees).",
        &[("", live_trees)],
    );
    family(
        &mut out,
        "canopy_max_live_trees",
        "gauge",
        "The configured max_live_trees.",
        &[("", app.config.max_live_trees as u64)],
    );
    let r = &app.router;
    family(
        &mut out,
        "canopy_trees_evicted_total",
        "counter",
        "Tenant trees stopped to stay within max_live_trees (least recently used first), since start.",
        &[("", r.evicted.load(std::sync::atomic::Ordering::Relaxed))],
    );
    family(
        &mut out,
        "canopy_tenants_owned",
        "gauge",
        "Tenants whose placement lease this node holds.",
        &[("", app.placement.held_count() as u64)],
    );
    family(
        &mut out,
        "canopy_commands_forwarded_total",
        "counter",
        "Commands this node's router sent on to the tenant's owner, since start.",
        &[("", r.forwarded.load(std::sync::atomic::Ordering::Relaxed))],
    );
    family(
        &mut out,
        "canopy_tenants_handed_over_total",
        "counter",
        "Tenants this node handed to a node that should own them now, since start.",
        &[("", r.handed_over.load(std::sync::atomic::Ordering::Relaxed))],
    );
    family(
        &mut out,
        "canopy_leases_lost_total",
        "counter",
        "Placement leases this node found taken by another node when renewing, since start.",
        &[("", r.leases_lost.load(std::sync::atomic::Ordering::Relaxed))],
    );
    let (remembered, parsed) = app.documents.counts();
    family(
        &mut out,
        "canopy_graphql_documents_total",
        "counter",
        "GraphQL documents of up to 16 KiB, by whether their parse was remembered.",
        &[("{parse=\"remembered\"}", remembered), ("{parse=\"parsed\"}", parsed)],
    );
    family(
        &mut out,
        "canopy_mail_sent_total",
        "counter",
        "Mails this node handed to the SMTP relay or wrote to the outbox, since start.",
        &[("", app.mail.sent())],
    );
    family(
        &mut out,
        "canopy_mail_retried_total",
        "counter",
        "Failed mail attempts this node will try again after a backoff, since start.",
        &[("", app.mail.retried())],
    );
    family(
        &mut out,
        "canopy_mail_dead_total",
        "counter",
        "Mails this node moved to MAIL_DEAD (`canopy mail dead`), since start.",
        &[("", app.mail.dead())],
    );
    let trees = match app.node.call(actors::tree::NodeMsg::LiveTrees, Some(std::time::Duration::from_secs(2))).await {
        Ok(ractor::rpc::CallResult::Success(n)) => n,
        _ => 0,
    };
    family(&mut out, "canopy_tenant_trees", "gauge", "Tenant trees running on this node.", &[("", trees as u64)]);
    out
}

#[handler]
fn jwks(Data(app): Data<&Arc<App>>) -> Json<serde_json::Value> {
    Json(app.tokens.jwks())
}

/// `GET /graphql`: a WebSocket upgrade for subscriptions
/// (`graphql-transport-ws`, or Apollo's older `graphql-ws`), whose
/// `connection_init` payload carries the token; else the GraphiQL page.
#[handler]
fn graphql_get(
    req: &Request,
    ws: Option<poem::web::websocket::WebSocket>,
    protocol: Option<async_graphql_poem::GraphQLProtocol>,
    Data(app): Data<&Arc<App>>,
) -> Response {
    let (Some(ws), Some(protocol)) = (ws, protocol) else { return graphiql_page(req, app) };
    let (app, client) = (app.clone(), client_address(app, req));
    let schema = app.schema.clone();
    ws.protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            async_graphql_poem::GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| crate::graphql::live::connection_data(app, client, payload))
                .serve()
        })
        .into_response()
}

/// GraphiQL needs introspection; where it is off, the page is not served either.
#[handler]
fn graphiql(req: &Request, Data(app): Data<&Arc<App>>) -> Response {
    graphiql_page(req, app)
}

fn graphiql_page(req: &Request, app: &App) -> Response {
    if !app.config.introspection {
        return refuse(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "GraphiQL is off (introspection = false); POST GraphQL requests here",
        );
    }
    Html(GraphiQLSource::build().endpoint(req.uri().path()).finish()).into_response()
}

#[handler]
async fn graphql_root(req: &Request, body: Body, Data(app): Data<&Arc<App>>) -> Response {
    execute(app, req.headers(), client_address(app, req), None, body).await
}

#[handler]
async fn graphql_tenant(req: &Request, Path(tenant): Path<String>, body: Body, Data(app): Data<&Arc<App>>) -> Response {
    execute(app, req.headers(), client_address(app, req), Some(tenant), body).await
}

/// The client's address: the connection's peer, or, behind a proxy Canopy is
/// told to trust (`trust_forwarded_for`), the last address of `X-Forwarded-For`,
/// the one that proxy added.
pub(crate) fn client_address(app: &App, req: &Request) -> std::net::IpAddr {
    let peer =
        req.remote_addr().as_socket_addr().map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    if !app.config.trust_forwarded_for {
        return peer;
    }
    // The last entry is the one the trusted proxy wrote; anything before it
    // came from the client. An entry that is not an address counts as none.
    let last = req.headers().get_all("x-forwarded-for").iter().next_back().and_then(|v| v.to_str().ok());
    last.and_then(|v| v.rsplit(',').next()).and_then(|a| a.trim().parse().ok()).unwrap_or(peer)
}

/// Where the request says its tenant is, before any check.
struct Claimed {
    source: &'static str,
    raw: String,
}

fn subdomain(headers: &HeaderMap, base: Option<&str>) -> Option<String> {
    let base = base?;
    let host = headers.get("host")?.to_str().ok()?;
    let host = host.split(':').next()?;
    let prefix = host.strip_suffix(base)?.strip_suffix('.')?;
    Some(prefix.to_owned())
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    match headers.get("authorization") {
        None => Ok(None),
        Some(v) => {
            let v = v.to_str().map_err(|_| ())?;
            let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).ok_or(())?;
            Ok(Some(token.trim()))
        }
    }
}

/// Who is asking and for which tenant, from the request's headers (and the
/// tenant in its path): the checks every endpoint runs before it reads a body.
/// A refusal is the answer to send, in the GraphQL error shape.
pub(crate) async fn resolve(
    app: &Arc<App>,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    path_tenant: Option<String>,
) -> Result<RequestCtx, Response> {
    // The caller's language, for messages.
    let locale = headers
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .map(Locale::from_accept_language)
        .unwrap_or_default();

    // 1. Where the request says it goes.
    let mut claimed = Vec::new();
    if let Some(h) = headers.get("x-tenant-id") {
        match h.to_str() {
            Ok(s) => claimed.push(Claimed { source: "x-tenant-id", raw: s.to_owned() }),
            Err(_) => {
                return Err(refuse_in(
                    &locale,
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    "invalid tenant id in x-tenant-id: not ASCII",
                ));
            }
        }
    }
    if let Some(p) = path_tenant {
        claimed.push(Claimed { source: "path", raw: p });
    }
    if let Some(s) = subdomain(headers, app.config.base_domain.as_deref()) {
        claimed.push(Claimed { source: "subdomain", raw: s });
    }
    let mut tenant: Option<TenantId> = None;
    for c in &claimed {
        let t = match TenantId::parse(&c.raw) {
            Ok(t) => t,
            Err(e) => {
                return Err(refuse_in(
                    &locale,
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    &format!("invalid tenant id in {}: {e}", c.source),
                ));
            }
        };
        if tenant.as_ref().is_some_and(|prev| *prev != t) {
            return Err(refuse_in(
                &locale,
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the tenant named by the header, path and subdomain disagree",
            ));
        }
        tenant = Some(t);
    }

    // 2. Who is asking: an account's session token (a JWT), or an API access
    // token (`cnp_…`) as `Authorization: Bearer` or `x-tenant-key`.
    let bearer = match bearer(headers) {
        Ok(b) => b,
        Err(()) => {
            return Err(refuse_in(
                &locale,
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "the Authorization header must be `Bearer <token>`",
            ));
        }
    };
    let tenant_key = match headers.get("x-tenant-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(k.trim()),
        Some(Err(_)) => {
            return Err(refuse_in(
                &locale,
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "the access token is not valid",
            ));
        }
    };
    let access_token = match (bearer, tenant_key) {
        (Some(_), Some(_)) => {
            return Err(refuse_in(
                &locale,
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "send one credential: `Authorization` or `x-tenant-key`, not both",
            ));
        }
        (None, Some(key)) => Some(key),
        (Some(b), None) if TokenSecret::is_meant(b) => Some(b),
        _ => None,
    };
    let principal = match bearer.filter(|_| access_token.is_none()) {
        None => None,
        Some(token) => match app.tokens.verify(token) {
            Ok(c) if c.sid.as_deref().is_some_and(|sid| app.revocations.is_revoked(sid)) => {
                return Err(refuse_in(
                    &locale,
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "the session has ended; sign in again",
                ));
            }
            Ok(c) => Some(c),
            Err(TokenError::Expired) => {
                return Err(refuse_in(&locale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "the token has expired"));
            }
            Err(TokenError::Invalid) => {
                return Err(refuse_in(&locale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "the token is not valid"));
            }
        },
    };
    if access_token.is_some() && tenant.is_none() {
        return Err(refuse_in(
            &locale,
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "an access token works in its tenant: send `x-tenant-id` too",
        ));
    }

    // 3. The token's tenant must match the request's; with no tenant named, it decides.
    let scope = match (&tenant, &principal) {
        (Some(t), Some(p)) if p.tenant != t.as_str() => {
            return Err(refuse_in(
                &locale,
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "this token was issued for another tenant",
            ));
        }
        (Some(t), _) => Scope::Tenant(t.clone()),
        (None, Some(p)) if p.tenant != PLATFORM_TOKEN => match Scope::parse_token(&p.tenant) {
            Ok(s) => s,
            Err(_) => {
                return Err(refuse_in(&locale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "the token is not valid"));
            }
        },
        (None, _) => Scope::Platform,
    };
    if let Scope::Tenant(t) = &scope {
        match app.tenant_status(t).await {
            Ok(Some(TenantStatus::Active)) => {}
            // Everyone who would act in it: members, tokens, and those signing in.
            Ok(Some(TenantStatus::Suspended)) => {
                return Err(refuse_in(&locale, StatusCode::FORBIDDEN, "FORBIDDEN", "this tenant is suspended"));
            }
            Ok(None | Some(TenantStatus::Deleted)) => {
                return Err(refuse_in(&locale, StatusCode::NOT_FOUND, "NOT_FOUND", "unknown tenant"));
            }
            Err(e) => {
                tracing::error!(error = %e, "checking a tenant");
                return Err(refuse_in(&locale, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error"));
            }
        }
    }
    // An access token is checked against the tenant's current read model.
    let token = match access_token {
        None => None,
        Some(raw) => match tokens::authenticate(&app.read_model, &scope, raw).await {
            Ok(Ok(caller)) => {
                app.token_usage.touch(&scope, &caller.token_id).await;
                Some(caller)
            }
            Ok(Err(refused)) => {
                return Err(refuse_in(&locale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", refused.message()));
            }
            Err(e) => {
                tracing::error!(error = %e, "checking an access token");
                return Err(refuse_in(&locale, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error"));
            }
        },
    };

    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
        Some(_) => {
            return Err(refuse_in(
                &locale,
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "idempotency-key must be 1 to 255 ASCII characters",
            ));
        }
    };
    let consistency =
        match headers.get("canopy-consistency").map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok())) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => {
                return Err(refuse_in(
                    &locale,
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    "canopy-consistency must be a number",
                ));
            }
        };

    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(actors::domain::session::UserAgent::from_header);
    Ok(RequestCtx { scope, principal, token, idempotency_key, consistency, locale: locale.clone(), user_agent, client })
}

/// `resolve` for credentials that come outside an HTTP request (a
/// WebSocket's `connection_init`, a push client's user name and password),
/// given as the headers they stand for: checked exactly as a request's, and
/// refused with the message a request would get.
pub(crate) async fn resolve_given(
    app: &Arc<App>,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Result<RequestCtx, String> {
    match resolve(app, headers, client, None).await {
        Ok(ctx) => Ok(ctx),
        Err(refused) => {
            let body = refused.into_body().into_string().await.unwrap_or_default();
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            Err(parsed["errors"][0]["message"].as_str().unwrap_or("the credentials were refused").to_owned())
        }
    }
}

/// A request body of at most `MAX_BODY` bytes, or the refusal to send.
pub(crate) async fn read_body(body: Body, locale: &Locale) -> Result<bytes::Bytes, Response> {
    match body.into_bytes_limit(MAX_BODY).await {
        Ok(b) => Ok(b),
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(refuse_in(
            locale,
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_USER_INPUT",
            "the request body is larger than 1 MiB",
        )),
        Err(_) => {
            Err(refuse_in(locale, StatusCode::BAD_REQUEST, "BAD_USER_INPUT", "the request body could not be read"))
        }
    }
}

async fn execute(
    app: &Arc<App>,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    path_tenant: Option<String>,
    body: Body,
) -> Response {
    let ctx = match resolve(app, headers, client, path_tenant).await {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let locale = ctx.locale.clone();

    // 4. The body, bounded, then parsed.
    let bytes = match read_body(body, &locale).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let mut request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(_) => {
            return refuse_in(
                &locale,
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the body must be a JSON object: {\"query\": \"...\", \"variables\": {...}}",
            );
        }
    };
    // 5. Run it.
    app.documents.prepare(&mut request);
    let response = app.schema.execute(request.data(app.clone()).data(ctx)).await;
    graphql_answer(response, &locale)
}

/// A GraphQL response as the HTTP answer: every error with a code (parse,
/// validation and limit errors come from async-graphql without one) and in
/// the caller's language, and the headers resolvers set.
pub(crate) fn graphql_answer(mut response: async_graphql::Response, locale: &Locale) -> Response {
    for e in &mut response.errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", "BAD_USER_INPUT");
        }
        if let Some(translated) = i18n::localize(&e.message, locale) {
            e.message = translated;
        }
    }
    let headers = response.http_headers.clone();
    let mut out = Json(&response).into_response();
    for (k, v) in headers.iter() {
        out.headers_mut().insert(k.clone(), v.clone());
    }
    out
}

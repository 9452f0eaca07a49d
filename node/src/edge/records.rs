//! A module's records over REST, under the m3saas URL shape
//! `/t/{tenant}/{module}/v{version}/{table}[/{id}]`, and the migration
//! endpoints (`POST /migrate`, `POST /t/{tenant}/migrate[/force|/seed|/deseed]`).
//!
//! `v1`, `v1.4` and `v1.4.2` all reach the tenant's `v1`; every answer says
//! which version was asked for and which full version served it. JSON in and
//! out; every error has the GraphQL error shape (`errors[].extensions.code`,
//! and `field` for bad input). The tenant and caller are resolved as for
//! GraphQL (`edge::resolve`); reads need the table's `read` permission,
//! writes its `write` permission. What the module actor and the read model
//! get is parsed first: field names against the manifest, values by type,
//! ids as UUIDs; nothing reaches SurrealQL as text.

use actors::domain::manifest::shown;
use std::collections::BTreeMap;
use std::sync::Arc;

use actors::command::{CommandResult, ModulesReply, ModulesRequest, RecordOp, RecordReply, RecordRequest};
use actors::domain::manifest::{Field, FieldType, ModuleVersion, Table};
use actors::domain::tenant::{Scope, TenantId};
use base64::Engine;
use poem::http::StatusCode;
use poem::web::{Data, Json, Path, Query};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde_json::{Map, Value};

use super::{client_address, read_body, refuse_in, resolve};
use crate::App;
use crate::graphql::request::{self, RequestCtx, command_id, command_principal};
use crate::read_model::RecordQuery;
use crate::read_model::records::{Filter, Op};

/// The largest page.
pub const MAX_PAGE: usize = 100;

/// A refusal: an HTTP status, a code and a message (and the field at fault).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None }
    }

    pub fn bad(field: &str, message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_USER_INPUT",
            message: format!("{field}: {message}"),
            field: Some(field.to_owned()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
    }

    /// A command's failure, with the status its code stands for.
    pub fn from_code(code: &str, message: String) -> Self {
        let (status, code) = match code {
            "BAD_USER_INPUT" => (StatusCode::BAD_REQUEST, "BAD_USER_INPUT"),
            "UNAUTHENTICATED" => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            "FORBIDDEN" => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            "NOT_FOUND" => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "CONFLICT" => (StatusCode::CONFLICT, "CONFLICT"),
            "LIMIT_EXCEEDED" => (StatusCode::TOO_MANY_REQUESTS, "LIMIT_EXCEEDED"),
            "RATE_LIMITED" => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            "UNAVAILABLE" => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "NOT_YET_READABLE" => (StatusCode::SERVICE_UNAVAILABLE, "NOT_YET_READABLE"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        Self::new(status, code, message)
    }

    fn respond(self, req: &RequestCtx) -> Response {
        let mut ext = serde_json::json!({ "code": self.code });
        if let Some(f) = self.field {
            ext["field"] = Value::String(f);
        }
        let message = super::i18n::localize(&self.message, &req.locale).unwrap_or(self.message);
        let body = serde_json::json!({ "errors": [{ "message": message, "extensions": ext }] });
        (self.status, Json(body)).into_response()
    }
}

/// Which module version a request reaches: the one the tenant holds, if the
/// path's version names its major.
pub struct Reached {
    pub version: Arc<ModuleVersion>,
    /// The version as the path gave it (`v1.4`).
    pub asked: String,
}

impl Reached {
    pub fn table(&self, raw: &str) -> Result<&Table, Refusal> {
        self.version
            .table(raw)
            .ok_or_else(|| Refusal::not_found(format!("{} has no table {}", self.version.key(), shown(raw))))
    }

    fn version_json(&self) -> Value {
        serde_json::json!({ "asked": self.asked, "served": self.version.full_version, "module": self.version.key().to_string() })
    }
}

/// The module version a tenant holds that `version` (`v1`, `v1.4`, `v1.4.2`)
/// reaches, or NOT_FOUND saying why.
pub async fn reach(app: &App, scope: &Scope, module: &str, version: &str) -> Result<Reached, Refusal> {
    let major = version
        .strip_prefix('v')
        .and_then(crate::graphql::modules::major_of)
        .ok_or_else(|| Refusal::not_found(format!("{} is not a version such as v1 or v1.4", shown(version))))?;
    let known = app.modules.versions(module);
    if known.is_empty() {
        return Err(Refusal::not_found(format!("there is no module {}", shown(module))));
    }
    let held = app
        .read_model
        .held_major(scope, module)
        .await
        .map_err(|e| Refusal::internal("reading a tenant's modules", e))?
        .ok_or_else(|| Refusal::not_found(format!("this tenant does not hold the module {module}")))?;
    if held != major {
        return Err(Refusal::not_found(format!("this tenant holds {module}@v{held}, not v{major}")));
    }
    let version_of = app
        .modules
        .get(module, major)
        .ok_or_else(|| Refusal::not_found(format!("this node does not serve {module}@v{major}")))?;
    Ok(Reached { version: version_of.clone(), asked: version.to_owned() })
}

/// The caller may use `permission` in the request's tenant.
pub async fn may(app: &App, req: &RequestCtx, permission: &str) -> Result<(), Refusal> {
    match crate::graphql::permissions::refusal(app, req, permission).await {
        Ok(None) => Ok(()),
        Ok(Some((code, message))) => Err(Refusal::from_code(code, message)),
        Err(_) => Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")),
    }
}

/// How the read model holds a field, for filters and answers.
pub fn cast_of(field: &Field) -> &'static str {
    match field.kind {
        FieldType::Decimal => "<decimal> ",
        FieldType::Datetime => "<datetime> ",
        _ => "",
    }
}

/// A row of the read model as the API shows it: `id`, the fields in their
/// canonical forms, `created_at` and `updated_at`.
pub fn present(table: &Table, mut row: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("id".into(), row.remove("record_id").unwrap_or(Value::Null));
    for (name, field) in &table.fields {
        let v = row.remove(name).unwrap_or(Value::Null);
        let v = if v.is_null() { v } else { field.parse_value(&v).unwrap_or(v) };
        out.insert(name.clone(), v);
    }
    for k in ["created_at", "updated_at"] {
        out.insert(k.into(), row.remove(k).unwrap_or(Value::Null));
    }
    out
}

/// The fields a row is read with.
pub fn row_fields(table: &Table) -> Vec<(String, &'static str)> {
    table.fields.values().map(|f| (f.name.clone(), cast_of(f))).collect()
}

/// An opaque cursor: the last row's order value and id.
pub fn cursor(order: &str, row: &Map<String, Value>) -> String {
    let key = if order == "created_at" { row.get("created_at") } else { row.get(order) };
    let id = row.get("record_id").or_else(|| row.get("id")).cloned().unwrap_or(Value::Null);
    let raw = serde_json::json!([key.cloned().unwrap_or(Value::Null), id]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub fn parse_cursor(raw: &str) -> Option<(Value, String)> {
    if raw.len() > 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let [value, Value::String(id)] = v.as_array()?.as_slice() else { return None };
    actors::domain::ids::is_safe_token(id).then(|| (value.clone(), id.clone()))
}

/// A list request, checked against the table: filters on known fields with
/// known operators and values of the field's type, an order on a known field.
pub struct ListArgs {
    pub filters: Vec<(String, String, Value)>,
    pub order: Option<(String, bool)>,
    pub first: usize,
    pub after: Option<String>,
}

pub fn query_for(reached: &Reached, table: &Table, args: ListArgs) -> Result<RecordQuery, Refusal> {
    let mut filters = Vec::new();
    for (name, op, value) in args.filters {
        let field = table.fields.get(&name).ok_or_else(|| Refusal::bad(&name, "is not a field of this table"))?;
        let op = Op::parse(&op).ok_or_else(|| Refusal::bad(&name, format!("unknown operator {}", shown(&op))))?;
        let parse = |v: &Value| field.parse_value(v).map_err(|p| Refusal::bad(&name, p));
        let value = match (op, value) {
            (Op::In, Value::Array(items)) => {
                if items.len() > MAX_PAGE {
                    return Err(Refusal::bad(&name, format!("`in` takes at most {MAX_PAGE} values")));
                }
                Value::Array(items.iter().map(parse).collect::<Result<_, _>>()?)
            }
            (Op::In, _) => return Err(Refusal::bad(&name, "`in` takes a list")),
            (Op::Contains, Value::String(s)) if s.chars().count() <= 200 => Value::String(s),
            (Op::Contains, _) => {
                return Err(Refusal::bad(&name, "`contains` takes a string of at most 200 characters"));
            }
            (_, v) => parse(&v)?,
        };
        filters.push(Filter { field: name, op, value, cast: cast_of(field) });
    }
    let (order, descending, order_cast) = match args.order {
        None => ("created_at".to_owned(), false, ""),
        Some((name, desc)) if name == "created_at" || name == "updated_at" => (name, desc, ""),
        Some((name, desc)) => {
            let field = table
                .fields
                .get(&name)
                .ok_or_else(|| Refusal::bad("orderBy", format!("{} is not a field of this table", shown(&name))))?;
            (name, desc, cast_of(field))
        }
    };
    if !(1..=MAX_PAGE).contains(&args.first) {
        return Err(Refusal::bad("first", format!("must be between 1 and {MAX_PAGE}")));
    }
    let after = match args.after {
        Some(c) => Some(parse_cursor(&c).ok_or_else(|| Refusal::bad("after", "not a cursor of this list"))?),
        None => None,
    };
    Ok(RecordQuery {
        table: table.storage_name(&reached.version.name),
        filters,
        order,
        order_cast,
        descending,
        after,
        limit: args.first + 1,
        fields: row_fields(table),
    })
}

/// Sends a record command to the module actor and waits for its projection.
pub async fn write(
    app: &App,
    req: &RequestCtx,
    reached: &Reached,
    table: &Table,
    operation: &str,
    op: RecordOp,
) -> Result<RecordReply, Refusal> {
    let request = RecordRequest {
        module: reached.version.name.to_string(),
        major: reached.version.major,
        table: table.name.clone(),
        op,
    };
    let reply: RecordReply = send(app, req, "record", operation, request).await?;
    projected(app, reply.seq).await?;
    Ok(reply)
}

/// Read-your-writes for a REST write: a write this node's read models do not
/// show in time is refused as `NOT_YET_READABLE`, never answered stale.
async fn projected(app: &App, seq: u64) -> Result<(), Refusal> {
    request::projected(app, seq)
        .await
        .map_err(|_| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_YET_READABLE", request::NOT_YET_READABLE))
}

/// A command to the tenant's tree, its failure as a refusal.
pub async fn send<R: serde::Serialize, T: serde::de::DeserializeOwned>(
    app: &App,
    req: &RequestCtx,
    aggregate: &str,
    operation: &str,
    request: R,
) -> Result<T, Refusal> {
    let envelope = request::envelope(req, command_id(req, operation), request)
        .map_err(|e| Refusal::from_code("UNAUTHENTICATED", e.message))?;
    dispatched(request::dispatch(app, &req.scope, aggregate, &envelope).await)
}

/// A dispatched command's answer as a refusal: a transport failure (logged
/// by `dispatch`) is `INTERNAL`.
fn dispatched<T>(answer: Result<CommandResult<T>, async_graphql::Error>) -> Result<T, Refusal> {
    answer
        .map_err(|e| {
            let unavailable = e
                .extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .is_some_and(|c| *c == async_graphql::Value::from("UNAVAILABLE"));
            if unavailable {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", e.message)
            } else {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
            }
        })?
        .map_err(|f| Refusal::from_code(&f.code, f.message))
}

/// The tenant and caller of a REST request (a tenant is required).
async fn caller(app: &Arc<App>, req: &Request, tenant: String) -> Result<RequestCtx, Response> {
    resolve(app, req.headers(), client_address(app, req), Some(tenant)).await
}

/// Reads a JSON object body.
async fn object_body(body: Body, req: &RequestCtx) -> Result<Map<String, Value>, Response> {
    let bytes = read_body(body, &req.locale).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Refusal::bad("body", "must be a JSON object of field values").respond(req)),
    }
}

fn answer(status: StatusCode, body: Value, seq: Option<u64>) -> Response {
    let mut out = (status, Json(body)).into_response();
    if let Some(seq) = seq
        && let Ok(v) = seq.to_string().parse()
    {
        out.headers_mut().insert("canopy-consistency", v);
    }
    out
}

fn record_json(reached: &Reached, table: &Table, reply: &RecordReply) -> Value {
    let mut row: Map<String, Value> = reply.values.clone();
    row.insert("record_id".into(), Value::String(reply.id.clone()));
    row.insert("created_at".into(), Value::String(reply.created_at.clone()));
    row.insert("updated_at".into(), Value::String(reply.updated_at.clone()));
    serde_json::json!({ "data": present(table, row), "version": reached.version_json() })
}

fn parse_id(raw: &str) -> Result<uuid::Uuid, Refusal> {
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if u.hyphenated().to_string() == raw => Ok(u),
        _ => Err(Refusal::bad("id", "not a record id (a lowercase UUID)")),
    }
}

/// Query parameters of a list: `first`, `after`, `sort` (`field` or
/// `-field`), and filters as `field=value` (eq) or `field.op=value` (`in`
/// takes comma-separated values).
fn list_args(table: &Table, params: &BTreeMap<String, String>) -> Result<ListArgs, Refusal> {
    let mut args = ListArgs { filters: Vec::new(), order: None, first: 20, after: None };
    for (k, v) in params {
        match k.as_str() {
            "first" => args.first = v.parse().map_err(|_| Refusal::bad("first", "not a number"))?,
            "after" => args.after = Some(v.clone()),
            "sort" => {
                let (name, desc) = match v.strip_prefix('-') {
                    Some(n) => (n, true),
                    None => (v.as_str(), false),
                };
                args.order = Some((name.to_owned(), desc));
            }
            _ => {
                let (name, op) = k.split_once('.').unwrap_or((k.as_str(), "eq"));
                let field = table.fields.get(name).ok_or_else(|| Refusal::bad(name, "is not a field of this table"))?;
                let typed = |raw: &str| query_value(field, raw);
                let value = if op == "in" { Value::Array(v.split(',').map(typed).collect()) } else { typed(v) };
                args.filters.push((name.to_owned(), op.to_owned(), value));
            }
        }
    }
    Ok(args)
}

/// A query-string value as JSON of the field's type (parsed again by type).
fn query_value(field: &Field, raw: &str) -> Value {
    match field.kind {
        FieldType::Int => raw.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(raw.to_owned())),
        FieldType::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.to_owned()),
        },
        _ => Value::String(raw.to_owned()),
    }
}

/// `GET` (list) and `POST` (create) on a table.
#[handler]
pub async fn on_table(
    req: &Request,
    Path((tenant, module, version, table)): Path<(String, String, String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
    body: Body,
    Data(app): Data<&Arc<App>>,
) -> Response {
    let ctx = match caller(app, req, tenant).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let post = req.method() == poem::http::Method::POST;
    let result = if post {
        create(app, &ctx, &module, &version, &table, body).await
    } else {
        list(app, &ctx, &module, &version, &table, &params).await
    };
    result.unwrap_or_else(|r| r.respond(&ctx))
}

async fn list(
    app: &App,
    ctx: &RequestCtx,
    module: &str,
    version: &str,
    table: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, Refusal> {
    let reached = reach(app, &ctx.scope, module, version).await?;
    let t = reached.table(table)?;
    may(app, ctx, &t.read).await?;
    let query = query_for(&reached, t, list_args(t, params)?)?;
    request::consistent(app, ctx).await;
    let (mut rows, total) =
        app.read_model.records(&ctx.scope, &query).await.map_err(|e| Refusal::internal("listing records", e))?;
    let has_next = rows.len() >= query.limit;
    rows.truncate(query.limit - 1);
    let end = rows.last().map(|r| cursor(&query.order, r));
    let data: Vec<Value> = rows.into_iter().map(|r| Value::Object(present(t, r))).collect();
    Ok(answer(
        StatusCode::OK,
        serde_json::json!({
            "data": data,
            "page": { "endCursor": end, "hasNextPage": has_next, "totalCount": total },
            "version": reached.version_json(),
        }),
        None,
    ))
}

async fn create(
    app: &App,
    ctx: &RequestCtx,
    module: &str,
    version: &str,
    table: &str,
    body: Body,
) -> Result<Response, Refusal> {
    let reached = reach(app, &ctx.scope, module, version).await?;
    let t = reached.table(table)?;
    may(app, ctx, &t.write).await?;
    let values = match object_body(body, ctx).await {
        Ok(v) => v,
        Err(_) => return Err(Refusal::bad("body", "must be a JSON object of field values")),
    };
    // Checked here too, so a bad input costs no command.
    t.validate_create(&values).map_err(|e| Refusal::bad(&e.field, &e.problem))?;
    let reply = write(app, ctx, &reached, t, "create", RecordOp::Create { values }).await?;
    Ok(answer(StatusCode::CREATED, record_json(&reached, t, &reply), Some(reply.seq)))
}

/// `GET`, `PATCH` and `DELETE` on one record.
#[handler]
pub async fn on_record(
    req: &Request,
    Path((tenant, module, version, table, id)): Path<(String, String, String, String, String)>,
    body: Body,
    Data(app): Data<&Arc<App>>,
) -> Response {
    let ctx = match caller(app, req, tenant).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let result = async {
        let reached = reach(app, &ctx.scope, &module, &version).await?;
        let t = reached.table(&table)?;
        let id = parse_id(&id)?;
        match *req.method() {
            poem::http::Method::GET => {
                may(app, &ctx, &t.read).await?;
                request::consistent(app, &ctx).await;
                let rows = app
                    .read_model
                    .records_by_id(&ctx.scope, &t.storage_name(&reached.version.name), &row_fields(t), &[id.to_string()])
                    .await
                    .map_err(|e| Refusal::internal("reading a record", e))?;
                let row = rows.into_iter().next().ok_or_else(|| Refusal::not_found("no such record"))?;
                Ok(answer(StatusCode::OK, serde_json::json!({ "data": present(t, row), "version": reached.version_json() }), None))
            }
            poem::http::Method::PATCH => {
                may(app, &ctx, &t.write).await?;
                let patch = object_body(body, &ctx).await.map_err(|_| Refusal::bad("body", "must be a JSON object of field values"))?;
                let reply = write(app, &ctx, &reached, t, "update", RecordOp::Update { id, patch }).await?;
                Ok(answer(StatusCode::OK, record_json(&reached, t, &reply), Some(reply.seq)))
            }
            poem::http::Method::DELETE => {
                may(app, &ctx, &t.write).await?;
                let reply = write(app, &ctx, &reached, t, "delete", RecordOp::Delete { id }).await?;
                Ok(answer(StatusCode::OK, serde_json::json!({ "data": { "id": reply.id, "deleted": true }, "version": reached.version_json() }), Some(reply.seq)))
            }
            _ => Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "BAD_USER_INPUT", "use GET, PATCH or DELETE")),
        }
    }
    .await;
    result.unwrap_or_else(|r| r.respond(&ctx))
}

/// What a migration endpoint runs.
#[derive(Clone, Copy)]
enum Migration {
    Migrate,
    Force,
    Seed,
    Deseed,
}

impl Migration {
    fn request(self, dry_run: bool) -> ModulesRequest {
        match self {
            Migration::Migrate => ModulesRequest::Migrate { module: None, force: false, dry_run },
            Migration::Force => ModulesRequest::Migrate { module: None, force: true, dry_run },
            Migration::Seed => ModulesRequest::Seed { module: None },
            Migration::Deseed => ModulesRequest::Deseed { module: None },
        }
    }
}

async fn tenant_migration(app: &Arc<App>, req: &Request, tenant: String, what: Migration) -> Response {
    let ctx = match caller(app, req, tenant).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let dry_run = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "dryRun=true" || p == "dry_run=true"));
    let result = async {
        may(app, &ctx, "manage_modules").await?;
        let reply: ModulesReply = send(app, &ctx, "modules", "rest-migration", what.request(dry_run)).await?;
        if reply.seq > 0 {
            projected(app, reply.seq).await?;
        }
        Ok::<_, Refusal>(answer(
            StatusCode::OK,
            serde_json::json!({ "data": { "applied": !dry_run, "steps": reply.steps } }),
            (reply.seq > 0).then_some(reply.seq),
        ))
    }
    .await;
    result.unwrap_or_else(|r| r.respond(&ctx))
}

#[handler]
pub async fn migrate_tenant(req: &Request, Path(tenant): Path<String>, Data(app): Data<&Arc<App>>) -> Response {
    tenant_migration(app, req, tenant, Migration::Migrate).await
}

#[handler]
pub async fn migrate_force(req: &Request, Path(tenant): Path<String>, Data(app): Data<&Arc<App>>) -> Response {
    tenant_migration(app, req, tenant, Migration::Force).await
}

#[handler]
pub async fn migrate_seed(req: &Request, Path(tenant): Path<String>, Data(app): Data<&Arc<App>>) -> Response {
    tenant_migration(app, req, tenant, Migration::Seed).await
}

#[handler]
pub async fn migrate_deseed(req: &Request, Path(tenant): Path<String>, Data(app): Data<&Arc<App>>) -> Response {
    tenant_migration(app, req, tenant, Migration::Deseed).await
}

/// `POST /migrate`: a platform administrator runs the pending migrations of
/// every tenant that holds a module.
#[handler]
pub async fn migrate_all(req: &Request, Data(app): Data<&Arc<App>>) -> Response {
    let ctx = match resolve(app, req.headers(), client_address(app, req), None).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    if crate::graphql::request::platform_admin(&ctx).is_err() {
        return refuse_in(&ctx.locale, StatusCode::FORBIDDEN, "FORBIDDEN", "only a platform administrator may do this");
    }
    match migrate_every_tenant(app, Some(&ctx)).await {
        Ok(report) => answer(StatusCode::OK, serde_json::json!({ "data": report }), None),
        Err(r) => r.respond(&ctx),
    }
}

/// Runs the pending migrations of every tenant holding a module, as `ctx`'s
/// platform administrator or, at start (`auto_migrate`), as the node itself.
pub async fn migrate_every_tenant(app: &App, ctx: Option<&RequestCtx>) -> Result<Vec<Value>, Refusal> {
    let tenants = app.read_model.tenants().await.map_err(|e| Refusal::internal("listing tenants", e))?;
    let mut report = Vec::new();
    for t in tenants {
        let Ok(slug) = TenantId::parse(&t.slug) else { continue };
        if t.status() != actors::domain::tenant::TenantStatus::Active {
            continue;
        }
        let scope = Scope::Tenant(slug);
        let held = app.read_model.tenant_modules(&scope).await.map_err(|e| Refusal::internal("reading modules", e))?;
        if held.is_empty() {
            continue;
        }
        let outcome = migrate_tenant_as_platform(app, ctx, &scope).await;
        report.push(match outcome {
            Ok(reply) => serde_json::json!({ "tenant": t.slug, "steps": reply.steps }),
            Err(r) => serde_json::json!({ "tenant": t.slug, "error": { "code": r.code, "message": r.message } }),
        });
    }
    Ok(report)
}

async fn migrate_tenant_as_platform(
    app: &App,
    ctx: Option<&RequestCtx>,
    scope: &Scope,
) -> Result<ModulesReply, Refusal> {
    let envelope = actors::command::CommandEnvelope {
        command_id: actors::domain::ids::CommandId::fresh(),
        principal: match ctx {
            Some(c) => command_principal(c).map_err(|e| Refusal::from_code("UNAUTHENTICATED", e.message))?,
            None => actors::command::Principal::Node,
        },
        request: ModulesRequest::Migrate { module: None, force: false, dry_run: false },
        client: None,
    };
    let reply: ModulesReply = dispatched(request::dispatch(app, scope, "modules", &envelope).await)?;
    projected(app, reply.seq).await?;
    Ok(reply)
}

/// A module version's GraphQL: `POST` runs a request, `GET` answers its SDL.
#[handler]
pub async fn module_graphql(
    req: &Request,
    Path((tenant, module, version)): Path<(String, String, String)>,
    body: Body,
    Data(app): Data<&Arc<App>>,
) -> Response {
    let ctx = match caller(app, req, tenant).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let reached = match reach(app, &ctx.scope, &module, &version).await {
        Ok(r) => r,
        Err(r) => return r.respond(&ctx),
    };
    let key = (reached.version.name.to_string(), reached.version.major);
    let Some(schema) = app.module_schemas.get(&key) else {
        return Refusal::not_found("this module version has no schema").respond(&ctx);
    };
    if req.method() == poem::http::Method::GET {
        return Response::builder().status(StatusCode::OK).content_type("text/plain; charset=utf-8").body(schema.sdl());
    }
    let bytes = match read_body(body, &ctx.locale).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let Ok(request) = serde_json::from_slice::<async_graphql::Request>(&bytes) else {
        return refuse_in(
            &ctx.locale,
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the body must be a JSON object: {\"query\": \"...\", \"variables\": {...}}",
        );
    };
    let module_request = crate::graphql::module_schema::ModuleRequest::new(app, &ctx, reached);
    let locale = ctx.locale.clone();
    let request = request.data(app.clone()).data(ctx).data(module_request);
    let response = schema.execute(async_graphql::dynamic::DynamicRequest::from(request)).await;
    super::graphql_answer(response, &locale)
}

//! A module version's own GraphQL API, typed from its manifest with
//! async-graphql's dynamic schema and served at
//! `/t/{tenant}/{module}/v{version}/graphql` (its SDL at a `GET` there).
//!
//! For each table `contact`: an object type `Contact` (its fields, typed; a
//! reference is the referenced record, read through a dataloader, and its id
//! as `{field}_id`), `contact(id)`, a connection `contacts(filter, orderBy,
//! first, after)` with `totalCount`, and `createContact`, `updateContact`,
//! `deleteContact`. Filters are typed per field (`eq`, `ne`, `lt`, `lte`,
//! `gt`, `gte`, `in`, `contains`). Reads need the table's `read` permission,
//! writes its `write` permission; writes go to the module actor and answer
//! after their projection (read-your-writes). Everything is checked by the
//! same code as the REST API (`edge::records`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actors::command::RecordOp;
use actors::domain::manifest::{Field as ManifestField, FieldType, ModuleVersion, Registry, Table};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar, Schema,
    SchemaError, TypeRef,
};
use async_graphql::{Name, Value as GqlValue};
use serde_json::{Map, Value};

use super::request::{RequestCtx, error};
use crate::App;
use crate::edge::records::{ListArgs, Reached, Refusal, cursor, present, query_for, row_fields, write};

/// Every module version's schema, built once at start.
pub type ModuleSchemas = HashMap<(String, u32), Schema>;

pub fn build_all(registry: &Registry) -> Result<ModuleSchemas, SchemaError> {
    let mut out = HashMap::new();
    for v in registry.all() {
        out.insert((v.name.to_string(), v.major), build(v, registry)?);
    }
    Ok(out)
}

fn pascal(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn plural(name: &str) -> String {
    if let Some(stem) = name.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if name.ends_with('s') || name.ends_with('x') || name.ends_with("ch") || name.ends_with("sh") {
        return format!("{name}es");
    }
    format!("{name}s")
}

/// A table of this module or of a dependency, as the schema names it.
#[derive(Clone)]
struct TableRef {
    /// The module version that defines it.
    version: Arc<ModuleVersion>,
    table: String,
    /// The GraphQL object type.
    type_name: String,
}

impl TableRef {
    fn table(&self) -> &Table {
        self.version.table(&self.table).expect("a table of its own version")
    }

    fn storage(&self) -> String {
        self.table().storage_name(&self.version.name)
    }
}

/// The tables a version's schema shows: its own, and every dependency table
/// a reference reaches, directly or through another reference (named
/// `{Module}{Table}`).
fn tables_of(version: &Arc<ModuleVersion>, registry: &Registry) -> BTreeMap<(String, String), TableRef> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<TableRef> = version
        .tables
        .keys()
        .map(|t| TableRef { version: version.clone(), table: t.clone(), type_name: pascal(t) })
        .collect();
    while let Some(t) = todo.pop() {
        let key = (t.version.name.to_string(), t.table.clone());
        if out.contains_key(&key) {
            continue;
        }
        for f in t.table().fields.values() {
            let FieldType::Reference { module, table } = &f.kind else { continue };
            let target = match module {
                None => TableRef {
                    version: t.version.clone(),
                    table: table.clone(),
                    type_name: if t.version.name == version.name {
                        pascal(table)
                    } else {
                        format!("{}{}", pascal(t.version.name.as_str()), pascal(table))
                    },
                },
                Some(m) => {
                    let Some(dep) = t.version.depends_on.iter().find(|d| d.name == *m) else { continue };
                    let Some(dv) = registry.get(dep.name.as_str(), dep.major) else { continue };
                    TableRef {
                        version: dv.clone(),
                        table: table.clone(),
                        type_name: format!("{}{}", pascal(m.as_str()), pascal(table)),
                    }
                }
            };
            if target.version.table(&target.table).is_some() {
                todo.push(target);
            }
        }
        out.insert(key, t);
    }
    out
}

/// The GraphQL type of a field's values (for output, input and filters).
fn scalar_of(owner: &str, field: &ManifestField) -> String {
    match &field.kind {
        FieldType::String | FieldType::Text => TypeRef::STRING.into(),
        FieldType::Int => TypeRef::INT.into(),
        FieldType::Bool => TypeRef::BOOLEAN.into(),
        FieldType::Decimal => "Decimal".into(),
        FieldType::Datetime => "DateTime".into(),
        FieldType::Enum { .. } => format!("{owner}{}", pascal(&field.name)),
        FieldType::Reference { .. } => TypeRef::ID.into(),
    }
}

/// The record a reference names, its loader's key: storage table and id.
type RecordKey = (String, String);

/// Loads records by id, one query per table for every key asked at once.
pub struct RecordLoader {
    app: Arc<App>,
    scope: actors::domain::tenant::Scope,
    /// Each storage table's fields (for the columns a row is read with).
    fields: HashMap<String, Vec<(String, &'static str)>>,
}

impl Loader<RecordKey> for RecordLoader {
    type Value = Map<String, Value>;
    type Error = Arc<str>;

    async fn load(&self, keys: &[RecordKey]) -> Result<HashMap<RecordKey, Self::Value>, Self::Error> {
        let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (table, id) in keys {
            by_table.entry(table.as_str()).or_default().push(id.clone());
        }
        let mut out = HashMap::new();
        for (table, ids) in by_table {
            let fields = self.fields.get(table).cloned().unwrap_or_default();
            let rows = self.app.read_model.records_by_id(&self.scope, table, &fields, &ids).await.map_err(|e| {
                tracing::error!(error = %e, "loading referenced records");
                Arc::<str>::from("internal error")
            })?;
            for row in rows {
                if let Some(id) = row.get("record_id").and_then(Value::as_str) {
                    out.insert((table.to_owned(), id.to_owned()), row);
                }
            }
        }
        Ok(out)
    }
}

/// What a request to a module's GraphQL carries besides `App` and `RequestCtx`.
pub struct ModuleRequest {
    pub reached: Reached,
    pub loader: DataLoader<RecordLoader>,
}

impl ModuleRequest {
    pub fn new(app: &Arc<App>, req: &RequestCtx, reached: Reached) -> Self {
        let mut fields = HashMap::new();
        for t in tables_of(&reached.version, &app.modules).values() {
            fields.insert(t.storage(), row_fields(t.table()));
        }
        let loader = RecordLoader { app: app.clone(), scope: req.scope.clone(), fields };
        Self { reached, loader: DataLoader::new(loader, tokio::spawn) }
    }
}

fn refusal(r: Refusal) -> async_graphql::Error {
    let field = r.field.clone();
    let e = error(r.code, r.message);
    match field {
        Some(f) => async_graphql::ErrorExtensions::extend_with(e, move |_, ext| ext.set("field", f.clone())),
        None => e,
    }
}

/// A row (as `present` shows it) as the object a resolver hands on.
#[derive(Clone)]
struct Row {
    table: TableRef,
    values: Map<String, Value>,
}

fn gql(v: &Value) -> GqlValue {
    GqlValue::from_json(v.clone()).unwrap_or(GqlValue::Null)
}

fn parts<'a>(ctx: &ResolverContext<'a>) -> (&'a Arc<App>, &'a RequestCtx, &'a ModuleRequest) {
    (ctx.data_unchecked::<Arc<App>>(), ctx.data_unchecked::<RequestCtx>(), ctx.data_unchecked::<ModuleRequest>())
}

/// The object type of a table.
fn object(t: &TableRef, tables: &BTreeMap<(String, String), TableRef>) -> Object {
    let table = t.table();
    let mut obj = Object::new(&t.type_name).description(table.description.clone());
    obj = obj.field(Field::new("id", TypeRef::named_nn(TypeRef::ID), |ctx| {
        FieldFuture::new(async move {
            let row = ctx.parent_value.try_downcast_ref::<Row>()?;
            Ok(Some(FieldValue::value(gql(&row.values["id"]))))
        })
    }));
    for name in ["created_at", "updated_at"] {
        obj = obj.field(Field::new(name, TypeRef::named_nn("DateTime"), move |ctx| {
            FieldFuture::new(async move {
                let row = ctx.parent_value.try_downcast_ref::<Row>()?;
                Ok(Some(FieldValue::value(gql(&row.values[name]))))
            })
        }));
    }
    for f in table.fields.values() {
        let name = f.name.clone();
        match &f.kind {
            FieldType::Reference { module, table: target } => {
                let module = module.as_ref().map_or(t.version.name.to_string(), ToString::to_string);
                let Some(target) = tables.get(&(module, target.clone())).cloned() else { continue };
                let id_name = format!("{name}_id");
                let n = name.clone();
                // A field of that name in the manifest keeps its own meaning.
                if !table.fields.contains_key(&id_name) {
                    obj = obj.field(Field::new(id_name, TypeRef::named(TypeRef::ID), move |ctx| {
                        let n = n.clone();
                        FieldFuture::new(async move {
                            let row = ctx.parent_value.try_downcast_ref::<Row>()?;
                            Ok(row.values.get(&n).filter(|v| !v.is_null()).map(|v| FieldValue::value(gql(v))))
                        })
                    }));
                }
                let type_name = target.type_name.clone();
                let name_for_doc = name.clone();
                obj = obj.field(
                    Field::new(name.clone(), TypeRef::named(type_name), move |ctx| {
                        let (n, target) = (name.clone(), target.clone());
                        FieldFuture::new(async move {
                            let row = ctx.parent_value.try_downcast_ref::<Row>()?;
                            let Some(id) = row.values.get(&n).and_then(Value::as_str) else { return Ok(None) };
                            let (_, _, m) = parts(&ctx);
                            let loaded = m
                                .loader
                                .load_one((target.storage(), id.to_owned()))
                                .await
                                .map_err(|e| error("INTERNAL", e.to_string()))?;
                            Ok(loaded.map(|r| {
                                FieldValue::owned_any(Row { values: present(target.table(), r), table: target.clone() })
                            }))
                        })
                    })
                    .description(format!("The record `{name_for_doc}_id` names, if it still exists.")),
                );
            }
            _ => {
                let ty = scalar_of(&t.type_name, f);
                let ty = if f.required { TypeRef::named_nn(ty) } else { TypeRef::named(ty) };
                obj = obj.field(Field::new(name.clone(), ty, move |ctx| {
                    let n = name.clone();
                    FieldFuture::new(async move {
                        let row = ctx.parent_value.try_downcast_ref::<Row>()?;
                        Ok(row.values.get(&n).filter(|v| !v.is_null()).map(|v| match v {
                            // Enum values travel as enum names.
                            Value::String(s)
                                if row
                                    .table
                                    .table()
                                    .fields
                                    .get(&n)
                                    .is_some_and(|f| matches!(f.kind, FieldType::Enum { .. })) =>
                            {
                                FieldValue::value(GqlValue::Enum(Name::new(s)))
                            }
                            other => FieldValue::value(gql(other)),
                        }))
                    })
                }));
            }
        }
    }
    obj
}

/// Input values of a create or a patch: every field optional (the manifest's
/// rules, checked on the values, name a missing one).
fn input(t: &TableRef, name: &str) -> InputObject {
    let mut input = InputObject::new(name);
    for f in t.table().fields.values() {
        input = input.field(InputValue::new(f.name.clone(), TypeRef::named(scalar_of(&t.type_name, f))));
    }
    input
}

/// The filter input of a scalar type: the comparisons it supports.
fn scalar_filter(scalar: &str, ordered: bool, text: bool) -> InputObject {
    let mut f = InputObject::new(format!("{scalar}Filter"))
        .field(InputValue::new("eq", TypeRef::named(scalar)))
        .field(InputValue::new("ne", TypeRef::named(scalar)))
        .field(InputValue::new("in", TypeRef::named_nn_list(scalar)));
    if ordered {
        for op in ["lt", "lte", "gt", "gte"] {
            f = f.field(InputValue::new(op, TypeRef::named(scalar)));
        }
    }
    if text {
        f = f.field(InputValue::new("contains", TypeRef::named(TypeRef::STRING)));
    }
    f
}

/// The JSON of an input value, enums as their names.
fn json_of(v: &GqlValue) -> Value {
    match v {
        GqlValue::Enum(n) => Value::String(n.to_string()),
        other => other.clone().into_json().unwrap_or(Value::Null),
    }
}

fn args_map(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Map<String, Value>> {
    let Some(v) = ctx.args.get(name).filter(|v| !v.is_null()) else { return Ok(Map::new()) };
    let obj = v.object()?;
    Ok(obj.iter().map(|(k, v)| (k.to_string(), json_of(v.as_value()))).collect())
}

fn record_id(ctx: &ResolverContext<'_>) -> async_graphql::Result<uuid::Uuid> {
    let raw = ctx.args.try_get("id")?.string()?;
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if u.hyphenated().to_string() == raw => Ok(u),
        _ => Err(super::request::bad_input("id", "not a record id (a lowercase UUID)")),
    }
}

/// The schema of one module version.
pub fn build(version: &Arc<ModuleVersion>, registry: &Registry) -> Result<Schema, SchemaError> {
    let tables = tables_of(version, registry);
    let mut query = Object::new("Query");
    let mut mutation = Object::new("Mutation");
    let mut builder_types: Vec<async_graphql::dynamic::Type> = Vec::new();
    for (s, ordered, text) in [
        (TypeRef::STRING, true, true),
        (TypeRef::INT, true, false),
        (TypeRef::BOOLEAN, false, false),
        ("Decimal", true, false),
        ("DateTime", true, false),
        (TypeRef::ID, false, false),
    ] {
        builder_types.push(scalar_filter(s, ordered, text).into());
    }
    builder_types.push(Scalar::new("Decimal").description("A decimal number as a string, such as \"1200.5\"").into());
    builder_types.push(Scalar::new("DateTime").description("An RFC 3339 instant, answered in UTC").into());
    builder_types.push(
        Object::new("PageInfo")
            .field(Field::new("hasNextPage", TypeRef::named_nn(TypeRef::BOOLEAN), |ctx| {
                FieldFuture::new(async move {
                    let p = ctx.parent_value.try_downcast_ref::<(bool, Option<String>)>()?;
                    Ok(Some(FieldValue::value(p.0)))
                })
            }))
            .field(Field::new("endCursor", TypeRef::named(TypeRef::STRING), |ctx| {
                FieldFuture::new(async move {
                    let p = ctx.parent_value.try_downcast_ref::<(bool, Option<String>)>()?;
                    Ok(p.1.clone().map(FieldValue::value))
                })
            }))
            .into(),
    );
    builder_types.push(Enum::new("Direction").item("ASC").item("DESC").into());
    for t in tables.values() {
        builder_types.push(object(t, &tables).into());
        for f in t.table().fields.values() {
            if let FieldType::Enum { values } = &f.kind {
                let e = Enum::new(scalar_of(&t.type_name, f)).items(values.iter().map(String::as_str));
                builder_types.push(e.into());
                builder_types.push(scalar_filter(&scalar_of(&t.type_name, f), false, false).into());
            }
        }
    }
    for (key, t) in &tables {
        // Dependency tables are types only (their records are reached through references).
        if key.0 != version.name.as_str() {
            continue;
        }
        let ty = t.type_name.clone();
        let name = t.table.clone();
        // Filter, order, connection and inputs.
        let mut filter = InputObject::new(format!("{ty}Filter"));
        filter = filter.field(InputValue::new("id", TypeRef::named("IDFilter")));
        let mut order_fields = Enum::new(format!("{ty}OrderField")).item("created_at").item("updated_at");
        for f in t.table().fields.values() {
            let scalar = scalar_of(&ty, f);
            filter = filter.field(InputValue::new(f.name.clone(), TypeRef::named(format!("{scalar}Filter"))));
            if !matches!(f.kind, FieldType::Reference { .. }) {
                order_fields = order_fields.item(f.name.clone());
            }
        }
        builder_types.push(filter.into());
        builder_types.push(order_fields.into());
        builder_types.push(
            InputObject::new(format!("{ty}Order"))
                .field(InputValue::new("field", TypeRef::named_nn(format!("{ty}OrderField"))))
                .field(InputValue::new("direction", TypeRef::named("Direction")))
                .into(),
        );
        builder_types.push(input(t, &format!("{ty}Input")).into());
        builder_types.push(input(t, &format!("{ty}Patch")).into());
        builder_types.push(
            Object::new(format!("{ty}Edge"))
                .field(Field::new("cursor", TypeRef::named_nn(TypeRef::STRING), |ctx| {
                    FieldFuture::new(async move {
                        let e = ctx.parent_value.try_downcast_ref::<(String, Row)>()?;
                        Ok(Some(FieldValue::value(e.0.clone())))
                    })
                }))
                .field(Field::new("node", TypeRef::named_nn(&ty), |ctx| {
                    FieldFuture::new(async move {
                        let e = ctx.parent_value.try_downcast_ref::<(String, Row)>()?;
                        Ok(Some(FieldValue::owned_any(e.1.clone())))
                    })
                }))
                .into(),
        );
        builder_types.push(connection(&ty).into());

        query = query.field(single(t));
        query = query.field(list(t));
        let pascal_name = pascal(&name);
        mutation = mutation.field(create(t, &pascal_name));
        mutation = mutation.field(update(t, &pascal_name));
        mutation = mutation.field(delete(t, &pascal_name));
    }
    let mut builder = Schema::build("Query", Some("Mutation"), None)
        .register(query)
        .register(mutation)
        .limit_depth(12)
        .limit_complexity(2000)
        .limit_directives(8);
    for t in builder_types {
        builder = builder.register(t);
    }
    builder.finish()
}

/// `{Table}Connection`: the edges of a page, its nodes, its page info and the count.
fn connection(ty: &str) -> Object {
    Object::new(format!("{ty}Connection"))
        .field(Field::new("edges", TypeRef::named_nn_list_nn(format!("{ty}Edge")), |ctx| {
            FieldFuture::new(async move {
                let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                Ok(Some(FieldValue::list(page.edges.iter().map(|e| FieldValue::owned_any(e.clone())))))
            })
        }))
        .field(Field::new("nodes", TypeRef::named_nn_list_nn(ty), |ctx| {
            FieldFuture::new(async move {
                let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                Ok(Some(FieldValue::list(page.edges.iter().map(|e| FieldValue::owned_any(e.1.clone())))))
            })
        }))
        .field(Field::new("pageInfo", TypeRef::named_nn("PageInfo"), |ctx| {
            FieldFuture::new(async move {
                let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                Ok(Some(FieldValue::owned_any((page.has_next, page.edges.last().map(|e| e.0.clone())))))
            })
        }))
        .field(Field::new("totalCount", TypeRef::named_nn(TypeRef::INT), |ctx| {
            FieldFuture::new(async move {
                let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                Ok(Some(FieldValue::value(page.total)))
            })
        }))
}

struct Page {
    edges: Vec<(String, Row)>,
    has_next: bool,
    total: u64,
}

fn single(t: &TableRef) -> Field {
    let t2 = t.clone();
    Field::new(t.table.clone(), TypeRef::named(&t.type_name), move |ctx| {
        let t = t2.clone();
        FieldFuture::new(async move {
            let (app, req, m) = parts(&ctx);
            crate::edge::records::may(app, req, &t.table().read).await.map_err(refusal)?;
            let id = record_id(&ctx)?;
            super::request::consistent(app, req).await;
            let row =
                m.loader.load_one((t.storage(), id.to_string())).await.map_err(|e| error("INTERNAL", e.to_string()))?;
            Ok(row.map(|r| FieldValue::owned_any(Row { values: present(t.table(), r), table: t.clone() })))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
}

fn list(t: &TableRef) -> Field {
    let t2 = t.clone();
    Field::new(plural(&t.table), TypeRef::named_nn(format!("{}Connection", t.type_name)), move |ctx| {
        let t = t2.clone();
        FieldFuture::new(async move {
            let (app, req, m) = parts(&ctx);
            crate::edge::records::may(app, req, &t.table().read).await.map_err(refusal)?;
            let mut filters = Vec::new();
            for (field, ops) in args_map(&ctx, "filter")? {
                let Value::Object(ops) = ops else { continue };
                let field = if field == "id" { "record_id".to_owned() } else { field };
                for (op, v) in ops {
                    if v.is_null() {
                        continue;
                    }
                    filters.push((field.clone(), op, v));
                }
            }
            let order = match args_map(&ctx, "orderBy")? {
                o if o.is_empty() => None,
                o => Some((
                    o.get("field").and_then(Value::as_str).unwrap_or("created_at").to_owned(),
                    o.get("direction").and_then(Value::as_str) == Some("DESC"),
                )),
            };
            let first = ctx.args.get("first").map(|v| v.i64()).transpose()?.unwrap_or(20);
            let after =
                ctx.args.get("after").filter(|v| !v.is_null()).map(|v| v.string().map(str::to_owned)).transpose()?;
            let first =
                usize::try_from(first).map_err(|_| super::request::bad_input("first", "must be between 1 and 100"))?;
            let query = query_for(&m.reached, t.table(), ListArgs { filters, order, first, after }).map_err(refusal)?;
            super::request::consistent(app, req).await;
            let (mut rows, total) = app
                .read_model
                .records(&req.scope, &query)
                .await
                .map_err(|e| super::request::internal("listing records", e))?;
            let has_next = rows.len() >= query.limit;
            rows.truncate(query.limit - 1);
            let edges = rows
                .into_iter()
                .map(|r| (cursor(&query.order, &r), Row { values: present(t.table(), r), table: t.clone() }))
                .collect();
            Ok(Some(FieldValue::owned_any(Page { edges, has_next, total })))
        })
    })
    .argument(InputValue::new("filter", TypeRef::named(format!("{}Filter", t.type_name))))
    .argument(InputValue::new("orderBy", TypeRef::named(format!("{}Order", t.type_name))))
    .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)).default_value(20))
    .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
}

/// The row a write answered with, as the API shows it.
fn written(t: &TableRef, reply: actors::command::RecordReply) -> Row {
    let mut row = reply.values;
    row.insert("record_id".into(), Value::String(reply.id));
    row.insert("created_at".into(), Value::String(reply.created_at));
    row.insert("updated_at".into(), Value::String(reply.updated_at));
    Row { values: present(t.table(), row), table: t.clone() }
}

fn create(t: &TableRef, pascal_name: &str) -> Field {
    let t2 = t.clone();
    Field::new(format!("create{pascal_name}"), TypeRef::named_nn(&t.type_name), move |ctx| {
        let t = t2.clone();
        FieldFuture::new(async move {
            let (app, req, m) = parts(&ctx);
            crate::edge::records::may(app, req, &t.table().write).await.map_err(refusal)?;
            let values = args_map(&ctx, "input")?;
            t.table().validate_create(&values).map_err(|e| refusal(Refusal::bad(&e.field, &e.problem)))?;
            let reply =
                write(app, req, &m.reached, t.table(), "create", RecordOp::Create { values }).await.map_err(refusal)?;
            ctx.insert_http_header("canopy-consistency", reply.seq.to_string());
            Ok(Some(FieldValue::owned_any(written(&t, reply))))
        })
    })
    .argument(InputValue::new("input", TypeRef::named_nn(format!("{}Input", t.type_name))))
}

fn update(t: &TableRef, pascal_name: &str) -> Field {
    let t2 = t.clone();
    Field::new(format!("update{pascal_name}"), TypeRef::named_nn(&t.type_name), move |ctx| {
        let t = t2.clone();
        FieldFuture::new(async move {
            let (app, req, m) = parts(&ctx);
            crate::edge::records::may(app, req, &t.table().write).await.map_err(refusal)?;
            let id = record_id(&ctx)?;
            let patch = args_map(&ctx, "input")?;
            let reply = write(app, req, &m.reached, t.table(), "update", RecordOp::Update { id, patch })
                .await
                .map_err(refusal)?;
            ctx.insert_http_header("canopy-consistency", reply.seq.to_string());
            Ok(Some(FieldValue::owned_any(written(&t, reply))))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new("input", TypeRef::named_nn(format!("{}Patch", t.type_name))))
}

fn delete(t: &TableRef, pascal_name: &str) -> Field {
    let t2 = t.clone();
    Field::new(format!("delete{pascal_name}"), TypeRef::named_nn(TypeRef::ID), move |ctx| {
        let t = t2.clone();
        FieldFuture::new(async move {
            let (app, req, m) = parts(&ctx);
            crate::edge::records::may(app, req, &t.table().write).await.map_err(refusal)?;
            let id = record_id(&ctx)?;
            let reply =
                write(app, req, &m.reached, t.table(), "delete", RecordOp::Delete { id }).await.map_err(refusal)?;
            ctx.insert_http_header("canopy-consistency", reply.seq.to_string());
            Ok(Some(FieldValue::value(reply.id)))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pascal_and_plural() {
        assert_eq!(pascal("contact"), "Contact");
        assert_eq!(pascal("line_item"), "LineItem");
        assert_eq!(plural("company"), "companies");
        assert_eq!(plural("day"), "days");
        assert_eq!(plural("deal"), "deals");
        assert_eq!(plural("address"), "addresses");
    }
}

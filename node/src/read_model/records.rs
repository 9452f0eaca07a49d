//! Module tables in the read model: what a tenant holds (`module_subscription`
//! and `module_migration`), and its records (`mod_{module}_{table}`), listed
//! with filters, an order and keyset pagination, or fetched by id (one query
//! for many ids, for dataloaders).
//!
//! Field names reach the query text only after the caller checked them
//! against the module's manifest (they follow its name rules); every value is
//! a bound variable.

use serde::Deserialize;
use serde_json::{Map, Value};

use actors::domain::tenant::Scope;

use super::{ReadError, ReadModel, db_name};

/// A module the tenant holds, with its applied migrations.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModuleRow {
    pub module: String,
    pub major: u32,
    pub full_version: String,
    pub subscribed_at: String,
    #[serde(default)]
    pub upgrading_to: Option<u32>,
    #[serde(default)]
    pub migrations: Vec<MigrationRow>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MigrationRow {
    pub migration: String,
    pub checksum: String,
    pub kind: String,
    pub applied_at: String,
}

/// A comparison of a list's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Contains,
}

impl Op {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "contains" => Op::Contains,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::In => "IN",
            Op::Contains => "CONTAINS",
        }
    }
}

/// One filter: `field op value`. `cast` is the SurrealDB cast its values
/// need (`<decimal> `, `<datetime> ` or nothing), from the field's type.
#[derive(Debug, Clone)]
pub struct Filter {
    pub field: String,
    pub op: Op,
    pub value: Value,
    pub cast: &'static str,
}

/// A page of a module table.
#[derive(Debug, Clone)]
pub struct RecordQuery {
    /// The storage table (`mod_contacts_contact`).
    pub table: String,
    pub filters: Vec<Filter>,
    /// The field to order by (`created_at` by default) and whether descending;
    /// `record_id` breaks ties.
    pub order: String,
    pub order_cast: &'static str,
    pub descending: bool,
    /// The last row of the previous page: its order value and record id.
    pub after: Option<(Value, String)>,
    pub limit: usize,
    /// The fields a row is read with, and how each is cast for the answer.
    pub fields: Vec<(String, &'static str)>,
}

/// What a row answers: values as text where SurrealDB holds them as numbers
/// or instants, so the canonical forms of the manifest come back.
fn projection(fields: &[(String, &'static str)]) -> String {
    let mut cols = vec!["record_id".to_owned(), "created_at".to_owned(), "updated_at".to_owned()];
    for (name, cast) in fields {
        cols.push(match *cast {
            "" => name.clone(),
            _ => format!("(IF {name} != NONE THEN <string> {name} ELSE NONE END) AS {name}"),
        });
    }
    cols.join(", ")
}

fn conditions(q: &RecordQuery, vars: &mut Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, f) in q.filters.iter().enumerate() {
        let name = format!("f{i}");
        let value = match (&f.value, f.op) {
            (Value::Array(items), Op::In) => {
                let cast_items = f.cast;
                vars.insert(name.clone(), Value::Array(items.clone()));
                if !cast_items.is_empty() {
                    out.push(format!("{} IN $f{i}.map(|$v| {cast_items}$v)", f.field));
                    continue;
                }
                format!("${name}")
            }
            (v, Op::Contains) => {
                vars.insert(name.clone(), v.clone());
                out.push(format!(
                    "string::contains(string::lowercase(<string> ({} ?? '')), string::lowercase(${name}))",
                    f.field
                ));
                continue;
            }
            (v, _) => {
                vars.insert(name.clone(), v.clone());
                format!("{}${name}", f.cast)
            }
        };
        out.push(format!("{} {} {value}", f.field, f.op.sql()));
    }
    if let Some((value, id)) = &q.after {
        vars.insert("after_v".into(), value.clone());
        vars.insert("after_id".into(), Value::String(id.clone()));
        let (cmp, cast) = (if q.descending { "<" } else { ">" }, q.order_cast);
        out.push(format!(
            "({o} {cmp} {cast}$after_v OR ({o} = {cast}$after_v AND record_id > $after_id))",
            o = q.order
        ));
    }
    out
}

impl ReadModel {
    /// The modules a tenant holds, by name, with their migrations in order.
    pub async fn tenant_modules(&self, scope: &Scope) -> Result<Vec<ModuleRow>, ReadError> {
        self.select(
            &db_name(scope),
            "SELECT module, major, full_version, subscribed_at, upgrading_to, \
             (SELECT migration, checksum, kind, applied_at FROM module_migration WHERE module = $parent.module ORDER BY applied_at, migration) AS migrations \
             FROM module_subscription ORDER BY module",
            serde_json::json!({}),
        )
        .await
    }

    /// The major version of `module` the tenant holds, read by its row's id
    /// (what every record request asks first; a name that is no safe token
    /// names no module).
    pub async fn held_major(&self, scope: &Scope, module: &str) -> Result<Option<u32>, ReadError> {
        #[derive(Deserialize)]
        struct Held {
            major: u32,
        }
        let Some(id) = super::record_id("module_subscription", module) else { return Ok(None) };
        let rows: Vec<Held> =
            self.select(&db_name(scope), &format!("SELECT major FROM {id}"), serde_json::json!({})).await?;
        Ok(rows.into_iter().next().map(|h| h.major))
    }

    /// A page of records and how many match the filters (ignoring the page).
    pub async fn records(&self, scope: &Scope, q: &RecordQuery) -> Result<(Vec<Map<String, Value>>, u64), ReadError> {
        let mut vars = Map::new();
        let conds = conditions(q, &mut vars);
        let mut total_conds = conds.clone();
        if q.after.is_some() {
            total_conds.pop();
        }
        let filter = |c: &[String]| if c.is_empty() { String::new() } else { format!(" WHERE {}", c.join(" AND ")) };
        let dir = if q.descending { "DESC" } else { "ASC" };
        vars.insert("limit".into(), q.limit.into());
        let sql = format!(
            "SELECT {cols} FROM {t}{w} ORDER BY {o} {dir}, record_id {dir} LIMIT $limit; SELECT count() AS n FROM {t}{tw} GROUP ALL;",
            cols = projection(&q.fields),
            t = q.table,
            w = filter(&conds),
            o = q.order,
            tw = filter(&total_conds),
        );
        let s = self.session(&db_name(scope)).await?;
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut res = s.query(sql).bind(Value::Object(vars)).await.map_err(super::read_err)?;
        let rows: Vec<Value> = res.take(0).map_err(super::read_err)?;
        let counts: Vec<Value> = res.take(1).map_err(super::read_err)?;
        let total = counts.first().and_then(|c| c.get("n")).and_then(Value::as_u64).unwrap_or(0);
        Ok((rows.into_iter().filter_map(|r| if let Value::Object(m) = r { Some(m) } else { None }).collect(), total))
    }

    /// The records among `ids` (any order; missing ones are left out), in one query.
    pub async fn records_by_id(
        &self,
        scope: &Scope,
        table: &str,
        fields: &[(String, &'static str)],
        ids: &[String],
    ) -> Result<Vec<Map<String, Value>>, ReadError> {
        // Record ids are fetched directly (no query plan over the table); only
        // subject-safe ids become literals.
        let targets: Vec<String> = ids.iter().filter_map(|i| super::record_id(table, i)).collect();
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Value> = self
            .select(
                &db_name(scope),
                &format!("SELECT {} FROM {}", projection(fields), targets.join(", ")),
                serde_json::json!({}),
            )
            .await?;
        Ok(rows.into_iter().filter_map(|r| if let Value::Object(m) = r { Some(m) } else { None }).collect())
    }
}

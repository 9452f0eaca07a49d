//! Module manifests: the format of `schemas/modules/{name}/v{N}/` (a
//! `module.toml`, its migrations, seeds and upgrade path), checked as a whole
//! into a `Registry`, and the validation of a module record's values against
//! its table. Pure: files arrive as bytes, and nothing here reads a disk or
//! awaits (the node checks the migrations on SurrealDB, `node/src/modules.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::access::CATALOG;

/// A record's field values in canonical form (see `Field::parse_value`). An
/// absent key is a field without a value: null is never stored.
pub type Values = BTreeMap<String, Value>;

/// A string field's maximum length in characters when the manifest sets none.
pub const STRING_MAX_LENGTH: u32 = 255;
/// A text field's maximum length in characters when the manifest sets none.
pub const TEXT_MAX_LENGTH: u32 = 65_536;
/// The largest `max_length` a manifest may set.
pub const MAX_LENGTH_LIMIT: u32 = 1_000_000;
/// Table names the module APIs use for themselves.
pub const RESERVED_TABLES: [&str; 5] = ["graphql", "sdl", "migrate", "seed", "deseed"];
/// Field names every stored record has besides its values.
pub const RESERVED_FIELDS: [&str; 8] =
    ["id", "created_at", "updated_at", "version", "origin", "record_id", "seq", "major"];
/// The field types, as `module.toml` writes them.
pub const FIELD_TYPES: [&str; 8] = ["string", "text", "int", "decimal", "bool", "datetime", "enum", "reference"];

/// How much of a caller's or a manifest's input an error message repeats.
const SHOWN_CHARS: usize = 64;
/// The key under which the `toml` crate hands a TOML datetime to a
/// self-describing type such as `serde_json::Value`.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// A problem in the module files; the message names the file, the key and the
/// problem (several problems are joined by newlines).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

/// Why a record's input was refused: the field (as the input named it,
/// bounded) and the problem. Neither holds more than 64 characters of input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self { field: shown(field), problem: problem.into() }
    }
}

/// `raw` without control characters and cut to 64 characters, for messages
/// that quote input.
pub fn shown(raw: &str) -> String {
    let mut out: String = raw.chars().filter(|c| !c.is_control()).take(SHOWN_CHARS).collect();
    if raw.chars().filter(|c| !c.is_control()).nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Names

fn is_module_name(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Table, field and enum value names: `^[a-z][a-z0-9_]{0,31}$`.
fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// `^[a-z]+_[a-z][a-z0-9_-]*$`, at most 64 characters.
fn is_permission_name(s: &str) -> bool {
    let Some((action, resource)) = s.split_once('_') else { return false };
    let r = resource.as_bytes();
    s.len() <= 64
        && !action.is_empty()
        && action.bytes().all(|c| c.is_ascii_lowercase())
        && r.first().is_some_and(u8::is_ascii_lowercase)
        && r.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`.
fn is_seed_key(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// `^[0-9]{4}_[a-z0-9_]+\.surql$`.
pub fn is_migration_name(s: &str) -> bool {
    let Some(stem) = s.strip_suffix(".surql") else { return false };
    let b = stem.as_bytes();
    b.len() >= 6
        && b.len() <= 128
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'_'
        && b[5..].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// The major number of a version directory name: `v` and a number from 1
/// without leading zeros (`v1`, `v64`); `None` for anything else.
pub fn parse_major_dir(raw: &str) -> Option<u32> {
    let digits = raw.strip_prefix('v')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A module's name: `^[a-z][a-z0-9]{1,31}$` (no underscore, so that the
/// storage name `mod_{module}_{table}` splits one way only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleName(String);

impl ModuleName {
    pub fn parse(raw: &str) -> Result<Self, ManifestError> {
        if is_module_name(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ManifestError(format!(
                "\"{}\" is not a module name (2 to 32 lowercase letters and digits, starting with a letter)",
                shown(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets the registry's maps be searched by `&str` (the derived order and
/// equality are the inner string's).
impl std::borrow::Borrow<str> for ModuleName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModuleName {
    type Error = ManifestError;
    fn try_from(raw: String) -> Result<Self, ManifestError> {
        Self::parse(&raw)
    }
}

impl From<ModuleName> for String {
    fn from(name: ModuleName) -> String {
        name.0
    }
}

/// One major version of a module, written `contacts@v1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleRef {
    pub name: ModuleName,
    pub major: u32,
}

impl ModuleRef {
    pub fn parse(raw: &str) -> Result<Self, ManifestError> {
        let refused =
            || ManifestError(format!("\"{}\" is not a module version (module@vN, like contacts@v1)", shown(raw)));
        let (name, version) = raw.split_once('@').ok_or_else(refused)?;
        let major = parse_major_dir(version).ok_or_else(refused)?;
        Ok(Self { name: ModuleName::parse(name)?, major })
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@v{}", self.name, self.major)
    }
}

impl std::str::FromStr for ModuleRef {
    type Err = ManifestError;
    fn from_str(raw: &str) -> Result<Self, ManifestError> {
        Self::parse(raw)
    }
}

impl TryFrom<String> for ModuleRef {
    type Error = ManifestError;
    fn try_from(raw: String) -> Result<Self, ManifestError> {
        Self::parse(&raw)
    }
}

impl From<ModuleRef> for String {
    fn from(r: ModuleRef) -> String {
        r.to_string()
    }
}

// ---------------------------------------------------------------------------
// Tables, fields and record values

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Text,
    Int,
    Decimal,
    Bool,
    Datetime,
    Enum {
        values: Vec<String>,
    },
    /// The id of a record of `table`, in this module (`module` is `None`) or
    /// in the named dependency (the major version the module depends on).
    Reference {
        module: Option<ModuleName>,
        table: String,
    },
}

impl FieldType {
    /// The type's name as `module.toml` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Text => "text",
            Self::Int => "int",
            Self::Decimal => "decimal",
            Self::Bool => "bool",
            Self::Datetime => "datetime",
            Self::Enum { .. } => "enum",
            Self::Reference { .. } => "reference",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub kind: FieldType,
    pub required: bool,
    /// Unique per tenant among the table's live records.
    pub unique: bool,
    /// The maximum length in characters: always set for string and text
    /// fields (the manifest's, else 255 and 65,536), never for other types.
    pub max_length: Option<u32>,
    /// The value an absent field gets on create, in canonical form.
    pub default: Option<Value>,
    /// Personal data: sealed in the log under the record's own key, which a
    /// deletion of the record destroys (see `tree/record.rs`).
    pub personal: bool,
}

impl Field {
    /// The canonical form of a non-null `value`, or the problem with it (which
    /// repeats at most 64 characters of the input):
    /// - string, text: a JSON string, at most `max_length` characters; a
    ///   string holds no control character, a text none but `\n` and `\t`;
    /// - int: a JSON integer that fits in 64 bits;
    /// - decimal: a JSON number or a string, returned as a string without
    ///   exponent or trailing zeros, at most 18 digits before the point and 9
    ///   after it (`-0` is `0`);
    /// - bool: `true` or `false`;
    /// - datetime: an RFC 3339 string, returned in UTC as
    ///   `YYYY-MM-DDTHH:MM:SS(.fff)Z` (milliseconds only when not zero;
    ///   finer digits are cut);
    /// - enum: one of the values;
    /// - reference: a UUID, returned lowercase and hyphenated. Whether the
    ///   record exists is for the caller to check.
    pub fn parse_value(&self, value: &Value) -> Result<Value, String> {
        match &self.kind {
            FieldType::String | FieldType::Text => {
                let Value::String(s) = value else { return Err("expected a string".into()) };
                let text = matches!(self.kind, FieldType::Text);
                if s.chars().any(|c| c.is_control() && !(text && (c == '\n' || c == '\t'))) {
                    return Err(if text {
                        "contains a control character (only line feeds and tabs may be in a text)".into()
                    } else {
                        "contains a control character".into()
                    });
                }
                let max = self.max_length.unwrap_or(STRING_MAX_LENGTH) as usize;
                if s.chars().nth(max).is_some() {
                    return Err(format!("is longer than {max} characters"));
                }
                Ok(value.clone())
            }
            FieldType::Int => match value {
                Value::Number(n) if n.is_i64() => Ok(value.clone()),
                Value::Number(n) if n.is_u64() => Err("is out of range (a 64-bit signed integer)".into()),
                _ => Err("expected an integer".into()),
            },
            FieldType::Decimal => {
                let raw = match value {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err("expected a decimal number (a JSON number, or a string like \"12.50\")".into()),
                };
                canonical_decimal(&raw).map(Value::String)
            }
            FieldType::Bool => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err("expected true or false".into()),
            },
            FieldType::Datetime => {
                let problem = "expected an RFC 3339 date and time, like \"2025-01-31T09:30:00Z\"";
                let Value::String(s) = value else { return Err(problem.into()) };
                canonical_datetime(s).map(Value::String).ok_or_else(|| problem.into())
            }
            FieldType::Enum { values } => {
                let expected = || values.join(", ");
                let Value::String(s) = value else { return Err(format!("expected one of {}", expected())) };
                if values.contains(s) {
                    Ok(value.clone())
                } else {
                    Err(format!("\"{}\" is not one of {}", shown(s), expected()))
                }
            }
            FieldType::Reference { table, .. } => {
                let problem = || format!("expected the id (a UUID) of a {table} record");
                let Value::String(s) = value else { return Err(problem()) };
                match uuid::Uuid::try_parse(s) {
                    Ok(id) => Ok(Value::String(id.hyphenated().to_string())),
                    Err(_) => Err(problem()),
                }
            }
        }
    }
}

/// The canonical decimal string of `raw` (see `Field::parse_value`).
fn canonical_decimal(raw: &str) -> Result<String, String> {
    let not_decimal = || "is not a decimal number".to_owned();
    // Longer input cannot be canonical within 18 + 9 digits but for zeros, and
    // a bound keeps an exponent from making the work large.
    if raw.len() > 64 {
        return Err(not_decimal());
    }
    let (negative, unsigned) = match raw.as_bytes().first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => {
            let e = &unsigned[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(not_decimal());
            }
            (&unsigned[..i], e.parse::<i64>().map_err(|_| not_decimal())?)
        }
        None => (unsigned, 0),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((_, "")) => return Err(not_decimal()),
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return Err(not_decimal());
    }
    // The digits with the point moved by the exponent, padded with zeros.
    let mut digits = format!("{int}{frac}");
    let mut point = int.len() as i64 + exponent;
    if point < 0 {
        digits.insert_str(0, &"0".repeat(point.unsigned_abs() as usize));
        point = 0;
    }
    let point = point as usize;
    if point > digits.len() {
        digits.push_str(&"0".repeat(point - digits.len()));
    }
    let int_part = digits[..point].trim_start_matches('0');
    let frac_part = digits[point..].trim_end_matches('0');
    if int_part.len() > 18 {
        return Err("has more than 18 digits before the decimal point".into());
    }
    if frac_part.len() > 9 {
        return Err("has more than 9 digits after the decimal point".into());
    }
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let zero = int_part == "0" && frac_part.is_empty();
    let sign = if negative && !zero { "-" } else { "" };
    Ok(if frac_part.is_empty() { format!("{sign}{int_part}") } else { format!("{sign}{int_part}.{frac_part}") })
}

/// `raw` (RFC 3339) in UTC as `YYYY-MM-DDTHH:MM:SS(.fff)Z`.
fn canonical_datetime(raw: &str) -> Option<String> {
    if raw.len() > 64 {
        return None;
    }
    let parsed = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).ok()?;
    // Through the timestamp, because converting a date near year 0 or 9999
    // to UTC could leave the range the formatter (and the format) supports.
    let utc = time::OffsetDateTime::from_unix_timestamp_nanos(parsed.unix_timestamp_nanos()).ok()?;
    if !(0..=9999).contains(&utc.year()) {
        return None;
    }
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    let ms = utc.millisecond();
    Some(if ms == 0 { format!("{base}Z") } else { format!("{base}.{ms:03}Z") })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub description: String,
    /// The permission needed to read the table's records.
    pub read: String,
    /// The permission needed to create, change and delete them.
    pub write: String,
    pub fields: BTreeMap<String, Field>,
}

impl Table {
    /// The read-model table of this table: `mod_{module}_{table}`.
    pub fn storage_name(&self, module: &ModuleName) -> String {
        format!("mod_{module}_{}", self.name)
    }

    /// The full values of a new record from its input: a key that is no field
    /// is refused, each value is parsed to its canonical form, an absent field
    /// gets its default, and a required field must then have a value. An
    /// explicit null is "no value" (no default applies to it).
    pub fn validate_create(&self, input: &Map<String, Value>) -> Result<Values, FieldError> {
        self.refuse_unknown(input)?;
        let mut values = Values::new();
        for (name, field) in &self.fields {
            match input.get(name) {
                Some(Value::Null) if field.required => return Err(FieldError::new(name, "is required")),
                Some(Value::Null) => {}
                Some(v) => {
                    values.insert(name.clone(), field.parse_value(v).map_err(|p| FieldError::new(name, p))?);
                }
                None => match &field.default {
                    Some(d) => {
                        values.insert(name.clone(), d.clone());
                    }
                    None if field.required => return Err(FieldError::new(name, "is required")),
                    None => {}
                },
            }
        }
        Ok(values)
    }

    /// The full values after a change: only the keys of `patch` change; null
    /// removes a field's value, which a required field refuses.
    pub fn validate_patch(&self, current: &Values, patch: &Map<String, Value>) -> Result<Values, FieldError> {
        self.refuse_unknown(patch)?;
        let mut values = current.clone();
        for (name, v) in patch {
            let field = &self.fields[name];
            if v.is_null() {
                if field.required {
                    return Err(FieldError::new(name, "is required and cannot be cleared"));
                }
                values.remove(name);
            } else {
                values.insert(name.clone(), field.parse_value(v).map_err(|p| FieldError::new(name, p))?);
            }
        }
        Ok(values)
    }

    fn refuse_unknown(&self, input: &Map<String, Value>) -> Result<(), FieldError> {
        match input.keys().find(|k| !self.fields.contains_key(*k)) {
            Some(k) => Err(FieldError::new(k, format!("is not a field of {}", self.name))),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Migrations, upgrades, seeds, permissions

/// A SurrealQL file a module version runs on a tenant's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The file name, like `0001_init.surql`.
    pub name: String,
    /// Lowercase hex SHA-256 of the file's bytes: a migration recorded as
    /// applied whose file changed since is a different migration.
    pub checksum: String,
    pub sql: String,
}

impl Migration {
    fn new(name: &str, bytes: &[u8], sql: String) -> Self {
        let checksum = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        Self { name: name.to_owned(), checksum, sql }
    }
}

/// One step of an upgrade's rewrite of a table's records, run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Transform {
    /// Moves `field`'s value to `to`.
    Rename { table: String, field: String, to: String },
    /// Cuts `field`'s string value at the first `separator`: the part before
    /// it goes to `into[0]`, the rest (if any) to `into[1]`; an empty part is
    /// no value.
    Split { table: String, field: String, into: [String; 2], separator: String },
    /// Sets `field` to `value` where the record has no value for it.
    Set {
        table: String,
        field: String,
        #[serde(deserialize_with = "json_from_toml")]
        value: Value,
    },
    /// Removes `field`'s value.
    Drop { table: String, field: String },
}

impl Transform {
    pub fn table(&self) -> &str {
        match self {
            Self::Rename { table, .. }
            | Self::Split { table, .. }
            | Self::Set { table, .. }
            | Self::Drop { table, .. } => table,
        }
    }
}

/// The path from the previous major version of a module to this one.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    /// The previous major version: the only one this version upgrades from.
    pub from: u32,
    /// The `upgrade/` files, in the order they run.
    pub migrations: Vec<Migration>,
    /// The names of this version's `migrations/` files that the upgrade
    /// migrations replace: recorded as applied, never run on an upgraded
    /// database. Always the first of the version's migrations, in order.
    pub baseline: Vec<String>,
    pub transforms: Vec<Transform>,
}

impl Upgrade {
    /// One record's values of `table` in the `from` version, rewritten by the
    /// table's transforms in order. The caller validates the result against
    /// this version's table (`validate_create` on the values as a map), so a
    /// value that does not fit is refused naming its field.
    pub fn transform(&self, table: &str, values: &Values) -> Values {
        let mut out = values.clone();
        for t in self.transforms.iter().filter(|t| t.table() == table) {
            match t {
                Transform::Rename { field, to, .. } => {
                    if let Some(v) = out.remove(field) {
                        out.insert(to.clone(), v);
                    }
                }
                Transform::Split { field, into, separator, .. } => {
                    let Some(v) = out.remove(field) else { continue };
                    let Value::String(s) = &v else {
                        out.insert(into[0].clone(), v);
                        continue;
                    };
                    let (first, rest) = s.split_once(separator.as_str()).unwrap_or((s, ""));
                    let (first, rest) = (first.to_owned(), rest.to_owned());
                    out.remove(&into[0]);
                    out.remove(&into[1]);
                    if !first.is_empty() {
                        out.insert(into[0].clone(), Value::String(first));
                    }
                    if !rest.is_empty() {
                        out.insert(into[1].clone(), Value::String(rest));
                    }
                }
                Transform::Set { field, value, .. } => {
                    if !value.is_null() && !out.contains_key(field) {
                        out.insert(field.clone(), value.clone());
                    }
                }
                Transform::Drop { field, .. } => {
                    out.remove(field);
                }
            }
        }
        out
    }
}

/// A record a module version brings along: main seeds when a tenant
/// subscribes, temporary seeds (demo data) on request until a deseed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedRecord {
    pub table: String,
    /// Names the record within its table and seed files, for references.
    pub key: String,
    /// The record's input; a reference field holds `{"seed": "<key>"}`.
    pub fields: Map<String, Value>,
}

impl SeedRecord {
    /// `(field, key)` for each reference field of the record: the seed record
    /// of the field's table whose id the field gets.
    pub fn seed_references(&self, table: &Table) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter(|(name, _)| table.fields.get(*name).is_some_and(|f| matches!(f.kind, FieldType::Reference { .. })))
            .filter_map(|(name, v)| seed_key(v).map(|k| (name.clone(), k.to_owned())))
            .collect()
    }

    /// The record's values, its references resolved by `id_of(table, key)`
    /// (the id the seed record of that table and key was created with).
    pub fn values(&self, table: &Table, id_of: impl Fn(&str, &str) -> Option<String>) -> Result<Values, FieldError> {
        let mut input = self.fields.clone();
        for (name, key) in self.seed_references(table) {
            let Some(Field { kind: FieldType::Reference { table: target, .. }, .. }) = table.fields.get(&name) else {
                continue;
            };
            let id = id_of(target, &key)
                .ok_or_else(|| FieldError::new(&name, format!("no seed record \"{}\" of {target}", shown(&key))))?;
            input.insert(name, Value::String(id));
        }
        table.validate_create(&input)
    }
}

/// The key of a seed reference `{"seed": "<key>"}`.
fn seed_key(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("seed").and_then(Value::as_str),
        _ => None,
    }
}

/// A permission a module adds to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionDecl {
    /// `{action}_{resource}`, like `read_contacts`; not a built-in permission.
    #[schemars(pattern(r"^[a-z]+_[a-z][a-z0-9_-]*$"))]
    pub name: String,
    pub description: String,
    /// Whether the built-in `member` role holds it (owner and admin hold every
    /// module permission).
    #[serde(default)]
    pub member: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModuleVersion {
    pub name: ModuleName,
    pub major: u32,
    /// The manifest's `version`, like `1.4.2`.
    pub full_version: String,
    pub description: String,
    pub depends_on: Vec<ModuleRef>,
    pub permissions: Vec<PermissionDecl>,
    pub tables: BTreeMap<String, Table>,
    /// The `migrations/` files, sorted by name: the order they run in.
    pub migrations: Vec<Migration>,
    pub main_seeds: Vec<SeedRecord>,
    pub temp_seeds: Vec<SeedRecord>,
    pub upgrade: Option<Upgrade>,
}

impl ModuleVersion {
    pub fn key(&self) -> ModuleRef {
        ModuleRef { name: self.name.clone(), major: self.major }
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}

// ---------------------------------------------------------------------------
// The TOML and JSON shapes of the files

/// The manifest of one module version: `schemas/modules/{name}/v{N}/module.toml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Manifest", title = "Canopy module manifest (module.toml)")]
struct RawManifest {
    /// The module's name; equal to its directory's name.
    #[schemars(pattern(r"^[a-z][a-z0-9]{1,31}$"))]
    name: String,
    /// `MAJOR[.MINOR[.PATCH]]`; MAJOR is the version directory's number (`v{MAJOR}`).
    #[schemars(pattern(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)){0,2}$"))]
    version: String,
    /// What the module is for, one or two sentences.
    description: String,
    /// The module versions this one needs, like `contacts@v1`.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[a-z][a-z0-9]{1,31}@v[1-9][0-9]*$")))]
    depends_on: Vec<String>,
    /// Permissions the module adds to the catalog.
    #[serde(default)]
    permissions: Vec<PermissionDecl>,
    /// The module's tables by name (`^[a-z][a-z0-9_]{0,31}$`).
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
    /// Only in a version with an upgrade path from the previous major version.
    upgrade: Option<RawUpgrade>,
}

/// A table of records.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Table")]
struct RawTable {
    #[serde(default)]
    description: String,
    /// The permission that reads the table: the module's own or a dependency's.
    read: String,
    /// The permission that creates, changes and deletes records.
    write: String,
    /// The fields by name (`^[a-z][a-z0-9_]{0,31}$`).
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
}

// For the JSON Schema only: the manifest reads `type` as a string, so that an
// unknown type gets a message naming its key.
/// The type of a field's values.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "FieldType")]
#[allow(dead_code)]
enum FieldTypeName {
    String,
    Text,
    Int,
    Decimal,
    Bool,
    Datetime,
    Enum,
    Reference,
}

/// A field of a table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Field")]
struct RawField {
    #[serde(rename = "type")]
    #[schemars(with = "FieldTypeName")]
    kind: String,
    /// A record must have a value (a default fills an absent one on create).
    #[serde(default)]
    required: bool,
    /// Unique per tenant among the table's live records.
    #[serde(default)]
    unique: bool,
    /// string and text only, in characters; string defaults to 255, text to 65536.
    #[schemars(range(min = 1, max = 1_000_000))]
    max_length: Option<i64>,
    /// enum only: the values, each `^[a-z][a-z0-9_]{0,31}$`.
    values: Option<Vec<String>>,
    /// reference only: a table of this module (`company`), or of a dependency
    /// (`contacts.contact`).
    to: Option<String>,
    /// The value an absent field gets on create; a valid value of the field.
    #[serde(default, deserialize_with = "some_json_from_toml")]
    default: Option<Value>,
    /// Personal data (a name, an email, a phone number): sealed in the event
    /// log under the record's own key, which deleting the record destroys.
    /// Any type but reference.
    #[serde(default)]
    personal: bool,
}

/// `[upgrade]`: how a tenant's data of the previous major version becomes this one's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Upgrade")]
struct RawUpgrade {
    /// The previous major version, like `v1`.
    #[schemars(pattern(r"^v[1-9][0-9]*$"))]
    from: String,
    /// Files under `upgrade/`, run in this order.
    #[serde(default)]
    migrations: Vec<String>,
    /// This version's `migrations/` files that the upgrade replaces (recorded as applied).
    #[serde(default)]
    baseline: Vec<String>,
    /// Rewrites of every record of a table, in order.
    #[serde(default, rename = "transform")]
    transforms: Vec<Transform>,
}

/// The JSON value of a TOML value: a TOML datetime (which the `toml` crate
/// hands to `serde_json::Value` as a one-key map) becomes its RFC 3339 string.
fn json_from_toml<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Object(m) if m.len() == 1 && m.get(TOML_DATETIME_KEY).is_some_and(Value::is_string) => {
            m.into_iter().next().map(|(_, s)| s).unwrap_or(Value::Null)
        }
        other => other,
    })
}

fn some_json_from_toml<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    json_from_toml(d).map(Some)
}

/// The JSON Schema of `module.toml` (as its TOML is read: a JSON document of
/// the same shape validates against it), published as `schemas/module.schema.json`.
pub fn manifest_json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(RawManifest)).expect("a schema is JSON")
}

// ---------------------------------------------------------------------------
// The registry

/// Every module version, checked as a whole: each manifest, its files, its
/// dependencies, references and permissions across versions, its upgrade
/// from the previous major version and its seeds.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    modules: BTreeMap<ModuleName, BTreeMap<u32, Arc<ModuleVersion>>>,
    permissions: Vec<PermissionDecl>,
}

impl Registry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// The registry of the files under a modules root, given as (path
    /// relative to the root with `/`, bytes). Every problem found is
    /// reported, one line each, naming the file, the key and the problem.
    /// `README.md` files are documentation, and allowed at the root, in a
    /// module's and in a version's directory.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Result<Registry, ManifestError> {
        let mut errors = Vec::new();
        let mut dirs: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        let mut bad_dirs = BTreeSet::new();
        for (path, bytes) in files {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\')) {
                errors.push(format!("{}: not a plain relative path", shown(&path)));
                continue;
            }
            match parts.as_slice() {
                ["README.md"] | [_, "README.md"] => {}
                [] | [_] | [_, _] => errors.push(format!(
                    "{}: not inside a version directory (files live in {{module}}/v{{N}}/)",
                    shown(&path)
                )),
                [module, version, rest @ ..] => {
                    if !is_module_name(module) {
                        if bad_dirs.insert(module.to_string()) {
                            errors.push(format!(
                                "{}: the directory is not a module name (2 to 32 lowercase letters and digits, starting with a letter)",
                                shown(module)
                            ));
                        }
                    } else if parse_major_dir(version).is_none() {
                        let dir = format!("{module}/{version}");
                        if bad_dirs.insert(dir.clone()) {
                            errors.push(format!(
                                "{}: \"{}\" is not a version directory (`v` and a major number from 1 without leading zeros, like v1)",
                                shown(&dir),
                                shown(version)
                            ));
                        }
                    } else {
                        dirs.entry((module.to_string(), version.to_string()))
                            .or_default()
                            .insert(rest.join("/"), bytes);
                    }
                }
            }
        }

        let mut parsed: BTreeMap<ModuleRef, Option<ModuleVersion>> = BTreeMap::new();
        let mut raws: BTreeMap<ModuleRef, RawManifest> = BTreeMap::new();
        for ((module, version), files) in &dirs {
            let key =
                ModuleRef { name: ModuleName(module.clone()), major: parse_major_dir(version).expect("checked above") };
            let before = errors.len();
            let built = build_version(&key, files, &mut errors);
            let ok = errors.len() == before;
            match built {
                Some((v, raw)) if ok => {
                    raws.insert(key.clone(), raw);
                    parsed.insert(key, Some(v));
                }
                _ => {
                    parsed.insert(key, None);
                }
            }
        }

        check_across_versions(&parsed, &raws, &mut errors);
        let permissions = collect_permissions(&parsed, &mut errors);
        if !errors.is_empty() {
            return Err(ManifestError(errors.join("\n")));
        }
        let mut modules: BTreeMap<ModuleName, BTreeMap<u32, Arc<ModuleVersion>>> = BTreeMap::new();
        for (key, v) in parsed {
            let v = v.expect("a version with problems was reported");
            modules.entry(key.name).or_default().insert(key.major, Arc::new(v));
        }
        Ok(Registry { modules, permissions })
    }

    pub fn get(&self, name: &str, major: u32) -> Option<&Arc<ModuleVersion>> {
        self.modules.get(name)?.get(&major)
    }

    /// The versions of a module, ascending by major.
    pub fn versions(&self, name: &str) -> Vec<&Arc<ModuleVersion>> {
        self.modules.get(name).map(|m| m.values().collect()).unwrap_or_default()
    }

    /// The newest major version of a module.
    pub fn latest(&self, name: &str) -> Option<&Arc<ModuleVersion>> {
        self.modules.get(name)?.values().next_back()
    }

    /// Every version, by name, then major.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ModuleVersion>> {
        self.modules.values().flat_map(|m| m.values())
    }

    /// Every permission declared by any module version, once each, by name.
    pub fn permissions(&self) -> Vec<&PermissionDecl> {
        self.permissions.iter().collect()
    }

    /// The versions `key` depends on directly, in the order it lists them.
    pub fn dependencies(&self, key: &ModuleRef) -> Vec<&Arc<ModuleVersion>> {
        let Some(v) = self.get(key.name.as_str(), key.major) else { return Vec::new() };
        v.depends_on.iter().filter_map(|d| self.get(d.name.as_str(), d.major)).collect()
    }

    /// `key` and everything it depends on, directly or not, each after its
    /// own dependencies: the order to install them in. Empty for an unknown key.
    pub fn closure(&self, key: &ModuleRef) -> Vec<&Arc<ModuleVersion>> {
        fn visit<'r>(
            r: &'r Registry,
            key: &ModuleRef,
            seen: &mut BTreeSet<ModuleRef>,
            out: &mut Vec<&'r Arc<ModuleVersion>>,
        ) {
            let Some(v) = r.get(key.name.as_str(), key.major) else { return };
            if !seen.insert(key.clone()) {
                return;
            }
            for d in &v.depends_on {
                visit(r, d, seen, out);
            }
            out.push(v);
        }
        let mut out = Vec::new();
        visit(self, key, &mut BTreeSet::new(), &mut out);
        out
    }

    /// The versions that depend directly on `key`.
    pub fn dependents(&self, key: &ModuleRef) -> Vec<&Arc<ModuleVersion>> {
        self.all().filter(|v| v.depends_on.contains(key)).collect()
    }

    /// `(major, raw)` of a manifest version `MAJOR[.MINOR[.PATCH]]` (numbers
    /// without leading zeros), like `1`, `1.4` or `1.0.1`; `None` otherwise.
    /// Callers that accept `v1.4` strip the `v` first.
    pub fn parse_full_version(raw: &str) -> Option<(u32, String)> {
        let parts: Vec<&str> = raw.split('.').collect();
        let number = |p: &&str| {
            !p.is_empty() && p.len() <= 9 && p.bytes().all(|c| c.is_ascii_digit()) && (*p == "0" || !p.starts_with('0'))
        };
        if parts.len() > 3 || !parts.iter().all(number) {
            return None;
        }
        Some((parts[0].parse().ok()?, raw.to_owned()))
    }
}

/// Collects one file's problems as `{file}: {key}: {problem}` lines.
struct Report<'e> {
    file: String,
    errors: &'e mut Vec<String>,
}

impl Report<'_> {
    fn at(&mut self, key: impl fmt::Display, problem: impl fmt::Display) {
        self.errors.push(format!("{}: {key}: {problem}", self.file));
    }
}

/// One version directory's manifest, files and seeds, checked on their own;
/// `None` when its manifest could not be read at all.
fn build_version(
    key: &ModuleRef,
    files: &BTreeMap<String, Vec<u8>>,
    errors: &mut Vec<String>,
) -> Option<(ModuleVersion, RawManifest)> {
    let dir = format!("{}/v{}", key.name, key.major);
    let errors_before = errors.len();
    let mut migrations = Vec::new();
    let mut upgrade_files = BTreeMap::new();
    let mut seeds: [Option<&[u8]>; 2] = [None, None];
    for (rest, bytes) in files {
        let file = format!("{dir}/{rest}");
        let sql = || std::str::from_utf8(bytes).ok().map(str::to_owned);
        match rest.split_once('/') {
            None if rest == "module.toml" || rest == "README.md" => {}
            Some(("migrations", name)) | Some(("upgrade", name)) if !is_migration_name(name) => errors.push(format!(
                "{}: not a migration file name (^[0-9]{{4}}_[a-z0-9_]+\\.surql$, like 0001_init.surql)",
                shown(&file)
            )),
            Some((folder @ ("migrations" | "upgrade"), name)) => match sql() {
                None => errors.push(format!("{file}: not UTF-8 text")),
                Some(s) if folder == "migrations" => migrations.push(Migration::new(name, bytes, s)),
                Some(s) => {
                    upgrade_files.insert(name.to_owned(), Migration::new(name, bytes, s));
                }
            },
            Some(("seeds", "main.json")) => seeds[0] = Some(bytes),
            Some(("seeds", "temp.json")) => seeds[1] = Some(bytes),
            _ => errors.push(format!(
                "{}: unexpected file (a version directory holds module.toml, migrations/*.surql, seeds/main.json, seeds/temp.json and upgrade/*.surql)",
                shown(&file)
            )),
        }
    }
    migrations.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in migrations.windows(2) {
        if pair[0].name[..4] == pair[1].name[..4] {
            errors.push(format!("{dir}/migrations/{}: its number is also {}'s", pair[1].name, pair[0].name));
        }
    }

    let file = format!("{dir}/module.toml");
    let Some(bytes) = files.get("module.toml") else {
        errors.push(format!("{file}: missing (every version directory has one)"));
        return None;
    };
    let mut report = Report { file, errors };
    let Ok(text) = std::str::from_utf8(bytes) else {
        report.at("(file)", "not UTF-8 text");
        return None;
    };
    let raw = match read_manifest(text) {
        Ok(raw) => raw,
        Err((k, p)) => {
            report.at(k, p);
            return None;
        }
    };

    if raw.name != key.name.as_str() {
        report.at("name", format!("\"{}\" is not the directory's name \"{}\"", shown(&raw.name), key.name));
    }
    match Registry::parse_full_version(&raw.version) {
        None => report.at("version", format!("\"{}\" is not MAJOR[.MINOR[.PATCH]], like 1.4.2", shown(&raw.version))),
        Some((major, _)) if major != key.major => report.at(
            "version",
            format!("the major version {major} of \"{}\" is not the directory's v{}", raw.version, key.major),
        ),
        Some(_) => {}
    }

    let mut depends_on: Vec<ModuleRef> = Vec::new();
    for (i, d) in raw.depends_on.iter().enumerate() {
        match ModuleRef::parse(d) {
            Err(e) => report.at(format!("depends_on[{i}]"), e),
            Ok(r) if r.name == key.name => report.at(format!("depends_on[{i}]"), "a module cannot depend on itself"),
            Ok(r) if depends_on.iter().any(|o| o.name == r.name) => {
                report.at(format!("depends_on[{i}]"), format!("depends on {} a second time", r.name))
            }
            Ok(r) => depends_on.push(r),
        }
    }

    let mut names = BTreeSet::new();
    for (i, p) in raw.permissions.iter().enumerate() {
        let k = format!("permissions[{i}].name");
        if !is_permission_name(&p.name) {
            let problem =
                "is not a permission name ({action}_{resource} like read_contacts: ^[a-z]+_[a-z][a-z0-9_-]*$)";
            report.at(&k, format!("\"{}\" {problem}", shown(&p.name)));
        } else if CATALOG.iter().any(|(c, _)| *c == p.name) {
            report.at(&k, format!("{} is a built-in permission", p.name));
        } else if !names.insert(p.name.as_str()) {
            report.at(&k, format!("{} is declared twice", p.name));
        }
        if p.description.trim().is_empty() {
            report.at(format!("permissions[{i}].description"), "is empty");
        }
    }

    let mut tables = BTreeMap::new();
    for (tname, rt) in &raw.tables {
        let tk = format!("tables.{tname}");
        if !is_identifier(tname) {
            report.at(&tk, "not a table name (^[a-z][a-z0-9_]{0,31}$)");
            continue;
        }
        if RESERVED_TABLES.contains(&tname.as_str()) {
            report.at(&tk, format!("\"{tname}\" is reserved (so are {})", RESERVED_TABLES.join(", ")));
            continue;
        }
        for (which, p) in [("read", &rt.read), ("write", &rt.write)] {
            if !is_permission_name(p) {
                report.at(format!("{tk}.{which}"), format!("\"{}\" is not a permission name", shown(p)));
            }
        }
        if rt.fields.is_empty() {
            report.at(format!("{tk}.fields"), "a table has at least one field");
        }
        let mut fields = BTreeMap::new();
        for (fname, rf) in &rt.fields {
            if let Some(f) = build_field(&format!("{tk}.fields.{fname}"), &key.name, fname, rf, &mut report) {
                fields.insert(fname.clone(), f);
            }
        }
        tables.insert(
            tname.clone(),
            Table {
                name: tname.clone(),
                description: rt.description.clone(),
                read: rt.read.clone(),
                write: rt.write.clone(),
                fields,
            },
        );
    }

    let upgrade = raw.upgrade.as_ref().and_then(|u| build_upgrade(u, &upgrade_files, &migrations, &mut report));
    if raw.upgrade.is_none() {
        for name in upgrade_files.keys() {
            report.errors.push(format!("{dir}/upgrade/{name}: an upgrade file without [upgrade] in module.toml"));
        }
    }

    let mut seed_sets: [Vec<SeedRecord>; 2] = [Vec::new(), Vec::new()];
    for (i, which) in ["main", "temp"].into_iter().enumerate() {
        let Some(bytes) = seeds[i] else { continue };
        let file = format!("{dir}/seeds/{which}.json");
        match serde_json::from_slice::<Vec<SeedRecord>>(bytes) {
            Ok(records) => seed_sets[i] = records,
            Err(e) => report.errors.push(format!("{file}: line {}: {}", e.line(), shown_error(&e.to_string()))),
        }
    }
    let [main_seeds, temp_seeds] = seed_sets;
    // Seeds are checked against tables without mistakes only: a field left
    // out for its own mistake would make every seed that sets it a second one.
    if report.errors.len() == errors_before {
        check_seeds(&format!("{dir}/seeds/main.json"), &tables, &main_seeds, &[], report.errors);
        check_seeds(&format!("{dir}/seeds/temp.json"), &tables, &temp_seeds, &main_seeds, report.errors);
    }

    let version = ModuleVersion {
        name: key.name.clone(),
        major: key.major,
        full_version: raw.version.clone(),
        description: raw.description.clone(),
        depends_on,
        permissions: raw.permissions.clone(),
        tables,
        migrations,
        main_seeds,
        temp_seeds,
        upgrade,
    };
    Some((version, raw))
}

/// A serde message cut to one bounded line.
fn shown_error(message: &str) -> String {
    let line = message.lines().next().unwrap_or("");
    line.chars().take(300).collect()
}

/// The manifest in `text`, or the dotted key and problem of the first thing wrong.
fn read_manifest(text: &str) -> Result<RawManifest, (String, String)> {
    let typed = match toml::from_str::<RawManifest>(text) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    let line = |e: &toml::de::Error| e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let doc = match toml::from_str::<toml::Table>(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = line(&e).map_or_else(|| "(file)".to_owned(), |l| format!("line {l}"));
            return Err((at, format!("invalid TOML: {}", shown_error(e.message()))));
        }
    };
    // Serde names a struct's unknown or missing key but not the path to the
    // struct; deserialising the parts on their own finds the innermost one.
    let (path, message) = locate(&doc).unwrap_or_else(|| (String::new(), typed.message().to_owned()));
    let mut message = shown_error(&message);
    let mut key = path;
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((name, tail)) = rest.split_once('`')
        {
            key = if key.is_empty() { name.to_owned() } else { format!("{key}.{name}") };
            let tail = tail.trim_start_matches(", ");
            message = if !prefix.starts_with("unknown") {
                "missing".to_owned()
            } else if tail.is_empty() {
                "unknown key".to_owned()
            } else {
                format!("unknown key ({tail})")
            };
        }
    }
    if key.is_empty() {
        key = "(top level)".to_owned();
    }
    if let Some(l) = line(&typed) {
        message = format!("{message} (line {l})");
    }
    Err((key, message))
}

/// The innermost part of a manifest document that does not deserialise, as
/// (its dotted key, serde's message); `None` when every part does on its own.
fn locate(doc: &toml::Table) -> Option<(String, String)> {
    /// Serde's message when `v` is not a `T`; for a wrong value (not an
    /// unknown or missing key) also the key holding it: the one whose removal
    /// changes the outcome, since serde stops at the first bad entry and
    /// checks for missing keys only after the last.
    fn check<T: serde::de::DeserializeOwned>(v: &toml::Value, key: String) -> Option<(String, String)> {
        let message = T::deserialize(v.clone()).err()?.message().to_owned();
        let named = message.starts_with("unknown field") || message.starts_with("missing field");
        if let (false, Some(table)) = (named, v.as_table()) {
            for k in table.keys() {
                let mut without = table.clone();
                without.remove(k);
                let outcome = T::deserialize(toml::Value::Table(without)).err().map(|e| e.message().to_owned());
                if outcome.as_deref() != Some(message.as_str()) {
                    let key = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                    return Some((key, message));
                }
            }
        }
        Some((key, message))
    }
    if let Some(perms) = doc.get("permissions").and_then(toml::Value::as_array) {
        for (i, p) in perms.iter().enumerate() {
            if let Some(found) = check::<PermissionDecl>(p, format!("permissions[{i}]")) {
                return Some(found);
            }
        }
    }
    if let Some(tables) = doc.get("tables").and_then(toml::Value::as_table) {
        for (t, tv) in tables {
            if let Some(fields) = tv.get("fields").and_then(toml::Value::as_table) {
                for (f, fv) in fields {
                    if let Some(found) = check::<RawField>(fv, format!("tables.{t}.fields.{f}")) {
                        return Some(found);
                    }
                }
            }
            if let Some(found) = check::<RawTable>(tv, format!("tables.{t}")) {
                return Some(found);
            }
        }
    }
    if let Some(up) = doc.get("upgrade") {
        if let Some(ts) = up.get("transform").and_then(toml::Value::as_array) {
            for (i, t) in ts.iter().enumerate() {
                if let Some(found) = check::<Transform>(t, format!("upgrade.transform[{i}]")) {
                    return Some(found);
                }
            }
        }
        if let Some(found) = check::<RawUpgrade>(up, "upgrade".to_owned()) {
            return Some(found);
        }
    }
    check::<RawManifest>(&toml::Value::Table(doc.clone()), String::new())
}

fn build_field(key: &str, module: &ModuleName, name: &str, raw: &RawField, report: &mut Report) -> Option<Field> {
    if !is_identifier(name) {
        report.at(key, "not a field name (^[a-z][a-z0-9_]{0,31}$)");
        return None;
    }
    if RESERVED_FIELDS.contains(&name) {
        report.at(key, format!("\"{name}\" is reserved (so are {})", RESERVED_FIELDS.join(", ")));
        return None;
    }
    let before = report.errors.len();
    let kind = match raw.kind.as_str() {
        "string" => FieldType::String,
        "text" => FieldType::Text,
        "int" => FieldType::Int,
        "decimal" => FieldType::Decimal,
        "bool" => FieldType::Bool,
        "datetime" => FieldType::Datetime,
        "enum" => {
            let values = raw.values.clone().unwrap_or_default();
            if raw.values.is_none() {
                report.at(format!("{key}.values"), "an enum field needs its values");
            } else if values.is_empty() {
                report.at(format!("{key}.values"), "an enum field needs at least one value");
            }
            let mut seen = BTreeSet::new();
            for (i, v) in values.iter().enumerate() {
                if !is_identifier(v) {
                    report.at(
                        format!("{key}.values[{i}]"),
                        format!("\"{}\" is not an enum value (^[a-z][a-z0-9_]{{0,31}}$)", shown(v)),
                    );
                } else if !seen.insert(v) {
                    report.at(format!("{key}.values[{i}]"), format!("\"{v}\" is listed twice"));
                }
            }
            FieldType::Enum { values }
        }
        "reference" => match raw.to.as_deref().map(|to| parse_reference_target(module, to)) {
            None => {
                report.at(format!("{key}.to"), "a reference field names its table in `to`");
                return None;
            }
            Some(Err(problem)) => {
                report.at(format!("{key}.to"), problem);
                return None;
            }
            Some(Ok((module, table))) => FieldType::Reference { module, table },
        },
        other => {
            report.at(
                format!("{key}.type"),
                format!("unknown field type \"{}\" (expected one of {})", shown(other), FIELD_TYPES.join(", ")),
            );
            return None;
        }
    };
    if raw.values.is_some() && !matches!(kind, FieldType::Enum { .. }) {
        report.at(format!("{key}.values"), "only an enum field has values");
    }
    if raw.to.is_some() && !matches!(kind, FieldType::Reference { .. }) {
        report.at(format!("{key}.to"), "only a reference field has `to`");
    }
    let max_length = match (&kind, raw.max_length) {
        (FieldType::String | FieldType::Text, Some(n)) if !(1..=i64::from(MAX_LENGTH_LIMIT)).contains(&n) => {
            report.at(format!("{key}.max_length"), format!("{n} is not between 1 and {MAX_LENGTH_LIMIT}"));
            None
        }
        (FieldType::String | FieldType::Text, Some(n)) => Some(n as u32),
        (FieldType::String, None) => Some(STRING_MAX_LENGTH),
        (FieldType::Text, None) => Some(TEXT_MAX_LENGTH),
        (_, Some(_)) => {
            report.at(
                format!("{key}.max_length"),
                format!("a {} field has no maximum length (only string and text have one)", kind.name()),
            );
            None
        }
        (_, None) => None,
    };
    if raw.personal && matches!(kind, FieldType::Reference { .. }) {
        report.at(format!("{key}.personal"), "a reference is a record id, not personal data");
    }
    let mut field = Field {
        name: name.to_owned(),
        kind,
        required: raw.required,
        unique: raw.unique,
        max_length,
        default: None,
        personal: raw.personal,
    };
    if let Some(d) = &raw.default {
        if matches!(field.kind, FieldType::Reference { .. }) {
            report.at(format!("{key}.default"), "a reference field has no default (ids differ per tenant)");
        } else {
            match field.parse_value(d) {
                Ok(v) => field.default = Some(v),
                Err(problem) => report.at(format!("{key}.default"), format!("not a valid value: {problem}")),
            }
        }
    }
    (report.errors.len() == before).then_some(field)
}

/// `company` (this module's table) or `contacts.contact` (a dependency's);
/// naming this module explicitly is the same as leaving it out.
fn parse_reference_target(own: &ModuleName, to: &str) -> Result<(Option<ModuleName>, String), String> {
    let (module, table) = match to.split_once('.') {
        Some((m, t)) => (Some(ModuleName::parse(m).map_err(|e| e.0)?), t),
        None => (None, to),
    };
    if !is_identifier(table) {
        return Err(format!("\"{}\" is not a table (`table`, or `module.table` of a dependency)", shown(to)));
    }
    Ok((module.filter(|m| m != own), table.to_owned()))
}

fn build_upgrade(
    raw: &RawUpgrade,
    files: &BTreeMap<String, Migration>,
    migrations: &[Migration],
    report: &mut Report,
) -> Option<Upgrade> {
    let before = report.errors.len();
    let from = parse_major_dir(&raw.from);
    if from.is_none() {
        report.at("upgrade.from", format!("\"{}\" is not a version like v1", shown(&raw.from)));
    }
    let mut listed = Vec::new();
    for (i, name) in raw.migrations.iter().enumerate() {
        match files.get(name) {
            None => report.at(format!("upgrade.migrations[{i}]"), format!("upgrade/{} does not exist", shown(name))),
            Some(_) if listed.iter().any(|m: &Migration| &m.name == name) => {
                report.at(format!("upgrade.migrations[{i}]"), format!("{name} is listed twice"))
            }
            Some(m) => listed.push(m.clone()),
        }
    }
    for name in files.keys().filter(|n| !raw.migrations.contains(n)) {
        report.at("upgrade.migrations", format!("upgrade/{name} is not listed"));
    }
    for (i, name) in raw.baseline.iter().enumerate() {
        match migrations.get(i) {
            Some(m) if &m.name == name => {}
            _ if migrations.iter().any(|m| &m.name == name) => report.at(
                format!("upgrade.baseline[{i}]"),
                format!("{name} is out of order: the baseline is the first of migrations/, in order"),
            ),
            _ => report.at(format!("upgrade.baseline[{i}]"), format!("migrations/{} does not exist", shown(name))),
        }
    }
    if report.errors.len() != before {
        return None;
    }
    Some(Upgrade {
        from: from?,
        migrations: listed,
        baseline: raw.baseline.clone(),
        transforms: raw.transforms.clone(),
    })
}

/// Checks a seed file's records against the version's tables; `main` holds
/// the main seeds when `records` are the temporary ones (their references
/// may name main seeds, and their keys must differ from them).
fn check_seeds(
    file: &str,
    tables: &BTreeMap<String, Table>,
    records: &[SeedRecord],
    main: &[SeedRecord],
    errors: &mut Vec<String>,
) {
    let mut report = Report { file: file.to_owned(), errors };
    // Keys seen so far, per table: a reference names an earlier record, so
    // creating records in file order (main first) never waits for one.
    let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in main {
        keys.entry(r.table.as_str()).or_default().insert(r.key.as_str());
    }
    let mut unique: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for r in main {
        if let Some(t) = tables.get(&r.table)
            && let Ok(values) = r.values(t, |_, _| Some(uuid::Uuid::nil().to_string()))
        {
            for (f, v) in values.iter().filter(|(f, _)| t.fields[*f].unique) {
                unique.entry((t.name.clone(), f.clone())).or_default().insert(v.to_string(), r.key.clone());
            }
        }
    }
    for (i, r) in records.iter().enumerate() {
        let at = format!("[{i}]");
        let Some(table) = tables.get(&r.table) else {
            report.at(format!("{at}.table"), format!("\"{}\" is not a table of this version", shown(&r.table)));
            continue;
        };
        if !is_seed_key(&r.key) {
            report.at(
                format!("{at}.key"),
                format!("\"{}\" is not a seed key (^[a-z0-9][a-z0-9_-]{{0,63}}$)", shown(&r.key)),
            );
        } else if keys.get(r.table.as_str()).is_some_and(|k| k.contains(r.key.as_str())) {
            report.at(format!("{at}.key"), format!("{} \"{}\" is seeded twice", r.table, r.key));
        }
        let mut ok = true;
        for (name, v) in &r.fields {
            let Some(Field { kind: FieldType::Reference { module, table: target }, .. }) = table.fields.get(name)
            else {
                continue;
            };
            if v.is_null() {
                continue;
            }
            let fk = format!("{at}.fields.{name}");
            if module.is_some() {
                report.at(fk, "a seed references only its own module's records");
                ok = false;
            } else {
                match seed_key(v) {
                    None => {
                        report.at(fk, "a reference in a seed is {\"seed\": \"<key>\"}");
                        ok = false;
                    }
                    Some(k) if !keys.get(target.as_str()).is_some_and(|ks| ks.contains(k)) => {
                        report.at(fk, format!("no earlier seed record \"{}\" of {target}", shown(k)));
                        ok = false;
                    }
                    Some(_) => {}
                }
            }
        }
        if ok {
            match r.values(table, |_, _| Some(uuid::Uuid::nil().to_string())) {
                Err(e) => report.at(format!("{at}.fields.{}", e.field), e.problem),
                Ok(values) => {
                    for (f, v) in values.iter().filter(|(f, _)| table.fields[*f].unique) {
                        let seen = unique.entry((table.name.clone(), f.clone())).or_default();
                        if let Some(other) = seen.insert(v.to_string(), r.key.clone()) {
                            report.at(
                                format!("{at}.fields.{f}"),
                                format!("unique, and {} \"{other}\" has the same value", r.table),
                            );
                        }
                    }
                }
            }
        }
        keys.entry(r.table.as_str()).or_default().insert(r.key.as_str());
    }
}

/// The checks that need more than one version: dependencies (existence,
/// cycles), references into dependencies, table permissions, upgrades. A
/// version whose own checks failed was reported already; the checks of
/// others skip what they would need of it, so one mistake is one message.
fn check_across_versions(
    parsed: &BTreeMap<ModuleRef, Option<ModuleVersion>>,
    raws: &BTreeMap<ModuleRef, RawManifest>,
    errors: &mut Vec<String>,
) {
    for (key, v) in parsed {
        let Some(v) = v else { continue };
        let mut report = Report { file: format!("{}/v{}/module.toml", key.name, key.major), errors: &mut *errors };
        let raw = &raws[key];

        let mut deps: BTreeMap<&ModuleName, Option<&ModuleVersion>> = BTreeMap::new();
        for d in &v.depends_on {
            let i = raw.depends_on.iter().position(|r| ModuleRef::parse(r).as_ref() == Ok(d)).unwrap_or(0);
            match parsed.get(d) {
                Some(found) => {
                    deps.insert(&d.name, found.as_ref());
                }
                None => {
                    let majors: Vec<String> =
                        parsed.keys().filter(|k| k.name == d.name).map(|k| format!("v{}", k.major)).collect();
                    let known = if majors.is_empty() {
                        format!("there is no module {}", d.name)
                    } else {
                        format!("{} has {}", d.name, majors.join(", "))
                    };
                    report.at(format!("depends_on[{i}]"), format!("{d} does not exist ({known})"));
                }
            }
            if let Some(cycle) = cycle_through(parsed, key, d) {
                report.at(format!("depends_on[{i}]"), format!("a dependency cycle: {cycle}"));
            }
        }
        let all_deps_known = deps.values().all(Option::is_some) && deps.len() == v.depends_on.len();

        for t in v.tables.values() {
            for (which, p) in [("read", &t.read), ("write", &t.write)] {
                let own = v.permissions.iter().any(|d| &d.name == p);
                let of_dep = deps.values().flatten().any(|d| d.permissions.iter().any(|d| &d.name == p));
                if !own && !of_dep && all_deps_known {
                    report.at(
                        format!("tables.{}.{which}", t.name),
                        format!("{p} is not a permission of {} or of a module it depends on", v.name),
                    );
                }
            }
            for f in t.fields.values() {
                let FieldType::Reference { module, table } = &f.kind else { continue };
                let k = format!("tables.{}.fields.{}.to", t.name, f.name);
                match module {
                    None if !v.tables.contains_key(table) => report.at(k, format!("{} has no table {table}", v.key())),
                    None => {}
                    Some(m) if !v.depends_on.iter().any(|d| &d.name == m) => {
                        report.at(k, format!("{m}.{table}: {} does not depend on {m} (add it to depends_on)", v.name))
                    }
                    // A dependency that does not exist was reported above.
                    Some(m) => match deps.get(m) {
                        Some(Some(dep)) if !dep.tables.contains_key(table) => {
                            report.at(k, format!("{} has no table {table}", dep.key()))
                        }
                        _ => {}
                    },
                }
            }
        }

        if let Some(up) = &v.upgrade {
            check_upgrade(parsed, v, up, &mut report);
        }
    }
}

/// `a@v1 -> b@v1 -> a@v1` when `start`'s dependency `first` leads back to it.
fn cycle_through(
    parsed: &BTreeMap<ModuleRef, Option<ModuleVersion>>,
    start: &ModuleRef,
    first: &ModuleRef,
) -> Option<String> {
    fn walk(
        parsed: &BTreeMap<ModuleRef, Option<ModuleVersion>>,
        at: &ModuleRef,
        target: &ModuleRef,
        path: &mut Vec<ModuleRef>,
        seen: &mut BTreeSet<ModuleRef>,
    ) -> bool {
        path.push(at.clone());
        if at == target {
            return true;
        }
        if seen.insert(at.clone())
            && let Some(Some(v)) = parsed.get(at)
        {
            for d in &v.depends_on {
                if walk(parsed, d, target, path, seen) {
                    return true;
                }
            }
        }
        path.pop();
        false
    }
    let mut path = vec![start.clone()];
    walk(parsed, first, start, &mut path, &mut BTreeSet::new())
        .then(|| path.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))
}

fn check_upgrade(
    parsed: &BTreeMap<ModuleRef, Option<ModuleVersion>>,
    v: &ModuleVersion,
    up: &Upgrade,
    report: &mut Report,
) {
    let previous = parsed.keys().filter(|k| k.name == v.name && k.major < v.major).map(|k| k.major).max();
    match previous {
        None => {
            report.at("upgrade.from", format!("there is no earlier version of {} to upgrade from", v.name));
            return;
        }
        Some(p) if p != up.from => {
            report.at("upgrade.from", format!("v{} is not the previous version of {} (v{p} is)", up.from, v.name));
            return;
        }
        Some(_) => {}
    }
    let from_key = ModuleRef { name: v.name.clone(), major: up.from };
    // A previous version with problems of its own was reported already.
    let Some(Some(old)) = parsed.get(&from_key) else { return };

    for t in old.tables.keys().filter(|t| !v.tables.contains_key(*t)) {
        report.at("upgrade", format!("table {t} of {from_key} is not in this version (an upgrade keeps every table)"));
    }
    // The fields each table's records hold after the transforms, to find
    // leftovers and required fields no record of the old version would have.
    let mut after: BTreeMap<&str, BTreeSet<String>> =
        old.tables.iter().map(|(n, t)| (n.as_str(), t.fields.keys().cloned().collect())).collect();
    let mut ok = true;
    for (i, t) in up.transforms.iter().enumerate() {
        let k = format!("upgrade.transform[{i}]");
        let (Some(old_t), Some(new_t)) = (old.tables.get(t.table()), v.tables.get(t.table())) else {
            report.at(
                format!("{k}.table"),
                format!("{} is not a table of both {from_key} and {}", shown(t.table()), v.key()),
            );
            ok = false;
            continue;
        };
        let source = |field: &str, report: &mut Report| {
            let known = old_t.fields.contains_key(field);
            if !known {
                report.at(format!("{k}.field"), format!("{from_key}'s {} has no field {}", old_t.name, shown(field)));
            }
            known
        };
        let target = |key: String, field: &str, report: &mut Report| {
            let known = new_t.fields.contains_key(field);
            if !known {
                report.at(key, format!("{}'s {} has no field {}", v.key(), new_t.name, shown(field)));
            }
            known
        };
        let fields = after.entry(old_t.name.as_str()).or_default();
        match t {
            Transform::Rename { field, to, .. } => {
                ok &= source(field, report) & target(format!("{k}.to"), to, report);
                fields.remove(field);
                fields.insert(to.clone());
            }
            Transform::Split { field, into, separator, .. } => {
                ok &= source(field, report)
                    & target(format!("{k}.into[0]"), &into[0], report)
                    & target(format!("{k}.into[1]"), &into[1], report);
                if into[0] == into[1] {
                    report.at(format!("{k}.into"), "splits into one field twice");
                    ok = false;
                }
                if separator.is_empty() {
                    report.at(format!("{k}.separator"), "is empty");
                    ok = false;
                }
                fields.remove(field);
                fields.extend(into.iter().cloned());
            }
            Transform::Set { field, value, .. } => {
                if target(format!("{k}.field"), field, report) {
                    if let Err(problem) = new_t.fields[field].parse_value(value) {
                        report.at(format!("{k}.value"), format!("not a valid value of {field}: {problem}"));
                        ok = false;
                    }
                } else {
                    ok = false;
                }
                fields.insert(field.clone());
            }
            Transform::Drop { field, .. } => {
                ok &= source(field, report);
                fields.remove(field);
            }
        }
    }
    if !ok {
        return;
    }
    for (tname, fields) in &after {
        let Some(new_t) = v.tables.get(*tname) else { continue };
        for f in fields.iter().filter(|f| !new_t.fields.contains_key(*f)) {
            report.at(
                "upgrade.transform",
                format!("field {f} of {from_key}'s {tname} is not in this version: rename, split or drop it"),
            );
        }
        for f in new_t.fields.values().filter(|f| f.required && f.default.is_none() && !fields.contains(&f.name)) {
            report.at(
                "upgrade.transform",
                format!(
                    "required field {} of {tname} has no value in records of {from_key}: {}",
                    f.name, "give it a default or a set transform"
                ),
            );
        }
    }
}

/// Every module permission once, by name; the same name declared with a
/// different description or `member` is a problem of the later file.
fn collect_permissions(
    parsed: &BTreeMap<ModuleRef, Option<ModuleVersion>>,
    errors: &mut Vec<String>,
) -> Vec<PermissionDecl> {
    let mut by_name: BTreeMap<&str, (&PermissionDecl, &ModuleRef)> = BTreeMap::new();
    for (key, v) in parsed {
        let Some(v) = v else { continue };
        for (i, p) in v.permissions.iter().enumerate() {
            match by_name.get(p.name.as_str()) {
                Some((first, at)) if *first != p => errors.push(format!(
                    "{}/v{}/module.toml: permissions[{i}]: {} is declared differently by {at} (one permission has one description and one member setting)",
                    key.name, key.major, p.name
                )),
                Some(_) => {}
                None => {
                    by_name.insert(&p.name, (p, key));
                }
            }
        }
    }
    by_name.into_values().map(|(p, _)| p.clone()).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A small but complete module: two tables, a reference, an enum with a
    /// default, a unique field, permissions and a migration.
    const CONTACTS: &str = r#"
name = "contacts"
version = "1.0.0"
description = "People and companies."

[[permissions]]
name = "read_contacts"
description = "Read contacts."
member = true

[[permissions]]
name = "write_contacts"
description = "Write contacts."

[tables.company]
read = "read_contacts"
write = "write_contacts"

[tables.company.fields.name]
type = "string"
required = true
unique = true
max_length = 200

[tables.contact]
read = "read_contacts"
write = "write_contacts"

[tables.contact.fields.name]
type = "string"
required = true

[tables.contact.fields.email]
type = "string"
unique = true
max_length = 320

[tables.contact.fields.company]
type = "reference"
to = "company"

[tables.contact.fields.status]
type = "enum"
values = ["lead", "customer", "former"]
default = "lead"
"#;

    const INIT: &str = "DEFINE TABLE mod_contacts_company SCHEMALESS;\nDEFINE TABLE mod_contacts_contact SCHEMALESS;\n";

    /// Every field type, for value validation.
    const EVERY_TYPE: &str = r#"
name = "kinds"
version = "1"
description = "Every field type."

[[permissions]]
name = "use_kinds"
description = "Use it."

[tables.thing]
read = "use_kinds"
write = "use_kinds"

[tables.thing.fields.label]
type = "string"
required = true
max_length = 5

[tables.thing.fields.body]
type = "text"

[tables.thing.fields.count]
type = "int"
default = 3

[tables.thing.fields.price]
type = "decimal"

[tables.thing.fields.done]
type = "bool"

[tables.thing.fields.due]
type = "datetime"

[tables.thing.fields.colour]
type = "enum"
values = ["red", "green"]

[tables.thing.fields.parent]
type = "reference"
to = "thing"
"#;

    fn files(entries: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        entries.iter().map(|(p, c)| (p.to_string(), c.as_bytes().to_vec())).collect()
    }

    fn contacts_with(manifest: &str) -> Vec<(String, Vec<u8>)> {
        files(&[("contacts/v1/module.toml", manifest), ("contacts/v1/migrations/0001_init.surql", INIT)])
    }

    fn registry(files: Vec<(String, Vec<u8>)>) -> Registry {
        Registry::from_files(files).unwrap_or_else(|e| panic!("refused:\n{e}"))
    }

    /// The error of a registry that must be refused, checked to hold each of `needles`.
    fn refused(files: Vec<(String, Vec<u8>)>, needles: &[&str]) -> String {
        let err = Registry::from_files(files).expect_err("the registry must be refused").0;
        for n in needles {
            assert!(err.contains(n), "{n:?} is not in:\n{err}");
        }
        err
    }

    fn table(manifest: &str, name: &str) -> Table {
        let module = ModuleName::parse(manifest.split('"').nth(1).unwrap()).unwrap();
        let r = registry(files(&[(&format!("{module}/v1/module.toml"), manifest)]));
        r.get(module.as_str(), 1).unwrap().table(name).unwrap().clone()
    }

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The files under `schemas/modules`, as the node hands them over.
    fn shipped() -> Vec<(String, Vec<u8>)> {
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap().to_str().unwrap().replace('\\', "/");
                    out.push((rel, std::fs::read(&path).unwrap()));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/modules");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out
    }

    // --- The registry -----------------------------------------------------

    #[test]
    fn given_the_shipped_modules_when_loaded_then_every_version_and_permission_is_there() {
        let r = registry(shipped());
        let keys: Vec<String> = r.all().map(|v| v.key().to_string()).collect();
        assert_eq!(keys, ["contacts@v1", "contacts@v2", "deals@v1"]);
        let perms: Vec<&str> = r.permissions().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(perms, ["read_contacts", "read_deals", "write_contacts", "write_deals"]);

        let v1 = r.get("contacts", 1).unwrap();
        assert_eq!(v1.table("contact").unwrap().storage_name(&v1.name), "mod_contacts_contact");
        assert_eq!(v1.migrations[0].name, "0001_init.surql");
        assert_eq!(v1.migrations[0].checksum.len(), 64);
        assert_eq!(v1.main_seeds.len(), 2);
        let v2 = r.get("contacts", 2).unwrap();
        let up = v2.upgrade.as_ref().unwrap();
        assert_eq!((up.from, up.baseline.as_slice()), (1, ["0001_init.surql".to_owned()].as_slice()));
        assert_eq!(r.versions("contacts").iter().map(|v| v.major).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(r.latest("contacts").unwrap().major, 2);

        let deals = ModuleRef::parse("deals@v1").unwrap();
        let closure: Vec<String> = r.closure(&deals).iter().map(|v| v.key().to_string()).collect();
        assert_eq!(closure, ["contacts@v1", "deals@v1"]);
        let contacts = ModuleRef::parse("contacts@v1").unwrap();
        assert_eq!(r.dependents(&contacts)[0].key(), deals);
        assert_eq!(r.dependencies(&deals)[0].key(), contacts);
        let deal = r.get("deals", 1).unwrap().table("deal").unwrap();
        let contact = &deal.fields["contact"].kind;
        assert_eq!(
            contact,
            &FieldType::Reference { module: Some(ModuleName::parse("contacts").unwrap()), table: "contact".into() }
        );
    }

    #[test]
    fn given_the_shipped_v1_contacts_when_upgraded_then_each_fits_v2() {
        let r = registry(shipped());
        let (v1, v2) = (r.get("contacts", 1).unwrap(), r.get("contacts", 2).unwrap());
        let up = v2.upgrade.as_ref().unwrap();
        let old = v1.table("contact").unwrap();
        for seed in v1.main_seeds.iter().chain(&v1.temp_seeds).filter(|s| s.table == "contact") {
            let values = seed.values(old, |_, _| Some(uuid::Uuid::nil().to_string())).unwrap();
            let new = up.transform("contact", &values);
            let map: Map<String, Value> = new.into_iter().collect();
            v2.table("contact").unwrap().validate_create(&map).unwrap_or_else(|e| panic!("{}: {e}", seed.key));
        }
    }

    #[test]
    fn given_an_empty_registry_then_it_holds_nothing() {
        let r = Registry::empty();
        assert!(r.all().next().is_none() && r.permissions().is_empty() && r.get("contacts", 1).is_none());
        assert!(registry(Vec::new()).all().next().is_none());
    }

    #[test]
    fn given_a_version_directory_that_is_not_v_and_a_major_then_it_is_refused() {
        for bad in ["1", "V1", "v1.1", "v1z", "v01", "v0", "v"] {
            let path = format!("contacts/{bad}/module.toml");
            refused(files(&[(&path, CONTACTS)]), &[&format!("contacts/{bad}: "), "is not a version directory"]);
        }
    }

    #[test]
    fn given_a_module_directory_that_is_not_a_module_name_then_it_is_refused() {
        refused(files(&[("my_contacts/v1/module.toml", CONTACTS)]), &["my_contacts: ", "not a module name"]);
    }

    #[test]
    fn given_a_manifest_named_unlike_its_directory_then_it_is_refused() {
        let m = CONTACTS.replace("name = \"contacts\"", "name = \"people\"");
        refused(contacts_with(&m), &["contacts/v1/module.toml: name: \"people\" is not the directory's name"]);
    }

    #[test]
    fn given_a_version_whose_major_is_not_its_directory_then_it_is_refused() {
        let m = CONTACTS.replace("version = \"1.0.0\"", "version = \"2.1\"");
        refused(contacts_with(&m), &["contacts/v1/module.toml: version: the major version 2"]);
        let m = CONTACTS.replace("version = \"1.0.0\"", "version = \"v1.0\"");
        refused(contacts_with(&m), &["contacts/v1/module.toml: version: \"v1.0\" is not MAJOR[.MINOR[.PATCH]]"]);
    }

    #[test]
    fn given_unknown_keys_anywhere_then_each_is_refused_naming_its_key() {
        let cases = [
            ("description = \"People and companies.\"", "colour = 1", "contacts/v1/module.toml: colour: unknown key"),
            ("[tables.company]\n", "[tables.company]\nsize = 2\n", "tables.company.size: unknown key"),
            ("type = \"enum\"", "type = \"enum\"\nlabels = []", "tables.contact.fields.status.labels: unknown key"),
            ("member = true", "member = true\nrole = \"x\"", "permissions[0].role: unknown key"),
        ];
        for (from, to, needle) in cases {
            let err = refused(contacts_with(&CONTACTS.replacen(from, to, 1)), &[needle, "expected"]);
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn given_an_unknown_field_type_then_the_message_names_the_key_and_the_types() {
        let m = format!("{CONTACTS}\n[tables.contact.fields.x]\ntype = \"strin\"\n");
        refused(
            contacts_with(&m),
            &[
                "contacts/v1/module.toml: tables.contact.fields.x.type: unknown field type \"strin\" (expected one of string, text, int, decimal, bool, datetime, enum, reference)",
            ],
        );
    }

    #[test]
    fn given_a_value_of_the_wrong_toml_type_then_its_key_and_line_are_named() {
        let m = CONTACTS.replacen("required = true", "required = \"yes\"", 1);
        refused(contacts_with(&m), &["tables.company.fields.name.required: invalid type", "(line "]);
        let m = CONTACTS.replacen("version = \"1.0.0\"", "version = 1", 1);
        refused(contacts_with(&m), &["contacts/v1/module.toml: version: invalid type"]);
        let m = CONTACTS.replacen("[tables.company]\n", "[tables.company]\nwrite = \"twice\"\n", 1);
        refused(contacts_with(&m), &["contacts/v1/module.toml: line ", "invalid TOML"]);
    }

    #[test]
    fn given_an_enum_without_values_or_with_a_foreign_default_then_it_is_refused() {
        let base = format!("{CONTACTS}\n[tables.contact.fields.kind]\ntype = \"enum\"\n");
        refused(contacts_with(&base), &["tables.contact.fields.kind.values: an enum field needs its values"]);
        refused(
            contacts_with(&format!("{base}values = []\n")),
            &["kind.values: an enum field needs at least one value"],
        );
        refused(contacts_with(&format!("{base}values = [\"a\", \"a\"]\n")), &["kind.values[1]: \"a\" is listed twice"]);
        refused(
            contacts_with(&format!("{base}values = [\"Big\"]\n")),
            &["kind.values[0]: \"Big\" is not an enum value"],
        );
        let m = CONTACTS.replace("default = \"lead\"", "default = \"prospect\"");
        refused(
            contacts_with(&m),
            &[
                "tables.contact.fields.status.default: not a valid value: \"prospect\" is not one of lead, customer, former",
            ],
        );
        let m = format!("{CONTACTS}\n[tables.contact.fields.n]\ntype = \"int\"\nvalues = [\"a\"]\n");
        refused(contacts_with(&m), &["tables.contact.fields.n.values: only an enum field has values"]);
    }

    #[test]
    fn given_a_max_length_on_a_non_string_or_out_of_range_then_it_is_refused() {
        let field = |body: &str| contacts_with(&format!("{CONTACTS}\n[tables.contact.fields.x]\n{body}\n"));
        refused(
            field("type = \"int\"\nmax_length = 3"),
            &["tables.contact.fields.x.max_length: a int field has no maximum length"],
        );
        refused(field("type = \"string\"\nmax_length = 0"), &["x.max_length: 0 is not between 1 and 1000000"]);
        refused(
            field("type = \"text\"\nmax_length = 1000001"),
            &["x.max_length: 1000001 is not between 1 and 1000000"],
        );
        let t = table(&format!("{CONTACTS}\n[tables.contact.fields.x]\ntype = \"text\"\n"), "contact");
        assert_eq!((t.fields["x"].max_length, t.fields["name"].max_length), (Some(65_536), Some(255)));
        assert_eq!(t.fields["status"].max_length, None);
    }

    #[test]
    fn given_personal_fields_then_only_references_are_refused() {
        let field = |body: &str| contacts_with(&format!("{CONTACTS}\n[tables.contact.fields.x]\n{body}\n"));
        refused(
            field("type = \"reference\"\nto = \"company\"\npersonal = true"),
            &["tables.contact.fields.x.personal: a reference is a record id, not personal data"],
        );
        let t =
            table(&format!("{CONTACTS}\n[tables.contact.fields.x]\ntype = \"datetime\"\npersonal = true\n"), "contact");
        assert!(t.fields["x"].personal);
        assert!(!t.fields["status"].personal);
    }

    #[test]
    fn given_reserved_or_malformed_table_and_field_names_then_they_are_refused() {
        let m = format!("{CONTACTS}\n[tables.contact.fields.created_at]\ntype = \"datetime\"\n");
        refused(contacts_with(&m), &["tables.contact.fields.created_at: \"created_at\" is reserved"]);
        let m = format!(
            "{CONTACTS}\n[tables.graphql]\nread = \"read_contacts\"\nwrite = \"write_contacts\"\n[tables.graphql.fields.a]\ntype = \"bool\"\n"
        );
        refused(contacts_with(&m), &["tables.graphql: \"graphql\" is reserved"]);
        let m = format!("{CONTACTS}\n[tables.contact.fields.Email2]\ntype = \"string\"\n");
        refused(contacts_with(&m), &["tables.contact.fields.Email2: not a field name"]);
        let m = format!("{CONTACTS}\n[tables.empty]\nread = \"read_contacts\"\nwrite = \"write_contacts\"\n");
        refused(contacts_with(&m), &["tables.empty.fields: a table has at least one field"]);
    }

    #[test]
    fn given_a_dependency_that_does_not_exist_then_it_is_refused() {
        let deals = DEALS.replace("contacts@v1", "contacts@v9");
        refused(
            files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", &deals)]),
            &["deals/v1/module.toml: depends_on[0]: contacts@v9 does not exist (contacts has v1)"],
        );
        let deals = DEALS.replace("contacts@v1", "contact@v1");
        refused(
            files(&[("deals/v1/module.toml", &deals)]),
            &["contact@v1 does not exist (there is no module contact)"],
        );
        let deals = DEALS.replace("contacts@v1", "contacts@1");
        refused(files(&[("deals/v1/module.toml", &deals)]), &["depends_on[0]: \"contacts@1\" is not a module version"]);
    }

    const DEALS: &str = r#"
name = "deals"
version = "1.0"
description = "Deals."
depends_on = ["contacts@v1"]

[[permissions]]
name = "read_deals"
description = "Read deals."

[tables.deal]
read = "read_deals"
write = "write_contacts"

[tables.deal.fields.contact]
type = "reference"
to = "contacts.contact"
"#;

    #[test]
    fn given_a_dependency_with_its_tables_and_permissions_then_they_may_be_used() {
        let r = registry(files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", DEALS)]));
        assert_eq!(r.get("deals", 1).unwrap().table("deal").unwrap().write, "write_contacts");
    }

    #[test]
    fn given_a_dependency_cycle_then_every_version_on_it_is_refused() {
        let module = |name: &str, dep: &str| {
            format!(
                "name = \"{name}\"\nversion = \"1\"\ndescription = \"x\"\ndepends_on = [\"{dep}\"]\n[[permissions]]\nname = \"use_{name}\"\ndescription = \"x\"\n"
            )
        };
        let (a, b) = (module("alpha", "beta@v1"), module("beta", "alpha@v1"));
        refused(
            files(&[("alpha/v1/module.toml", &a), ("beta/v1/module.toml", &b)]),
            &[
                "alpha/v1/module.toml: depends_on[0]: a dependency cycle: alpha@v1 -> beta@v1 -> alpha@v1",
                "beta/v1/module.toml: depends_on[0]: a dependency cycle: beta@v1 -> alpha@v1 -> beta@v1",
            ],
        );
        let own = module("alpha", "alpha@v1");
        refused(files(&[("alpha/v1/module.toml", &own)]), &["depends_on[0]: a module cannot depend on itself"]);
    }

    #[test]
    fn given_a_reference_to_a_missing_table_then_it_is_refused() {
        let m = CONTACTS.replace("to = \"company\"", "to = \"firm\"");
        refused(contacts_with(&m), &["tables.contact.fields.company.to: contacts@v1 has no table firm"]);
        let undeclared = DEALS.replace("depends_on = [\"contacts@v1\"]", "depends_on = []");
        refused(
            files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", &undeclared)]),
            &[
                "deals/v1/module.toml: tables.deal.fields.contact.to: contacts.contact: deals does not depend on contacts",
            ],
        );
        let missing = DEALS.replace("contacts.contact", "contacts.person");
        refused(
            files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", &missing)]),
            &["tables.deal.fields.contact.to: contacts@v1 has no table person"],
        );
        let m = CONTACTS.replace("to = \"company\"\n", "");
        refused(contacts_with(&m), &["tables.contact.fields.company.to: a reference field names its table in `to`"]);
    }

    #[test]
    fn given_a_table_permission_of_no_module_it_may_use_then_it_is_refused() {
        let m = CONTACTS.replacen("read = \"read_contacts\"", "read = \"read_deals\"", 1);
        refused(
            contacts_with(&m),
            &[
                "contacts/v1/module.toml: tables.company.read: read_deals is not a permission of contacts or of a module it depends on",
            ],
        );
        let m = CONTACTS.replacen("write = \"write_contacts\"", "write = \"manage_modules\"", 1);
        refused(contacts_with(&m), &["tables.company.write: manage_modules is not a permission of contacts"]);
    }

    #[test]
    fn given_a_built_in_or_malformed_permission_name_then_it_is_refused() {
        let m = CONTACTS.replace("name = \"write_contacts\"", "name = \"read_tenant\"");
        refused(
            contacts_with(&m),
            &["contacts/v1/module.toml: permissions[1].name: read_tenant is a built-in permission"],
        );
        for bad in ["contacts", "Read_contacts", "read_", "_contacts", "read_Contacts", "read_1st"] {
            let m = CONTACTS.replace("name = \"write_contacts\"", &format!("name = \"{bad}\""));
            refused(contacts_with(&m), &[&format!("permissions[1].name: \"{bad}\" is not a permission name")]);
        }
        let m = CONTACTS.replace("name = \"write_contacts\"", "name = \"read_contacts\"");
        refused(contacts_with(&m), &["permissions[1].name: read_contacts is declared twice"]);
    }

    #[test]
    fn given_one_permission_declared_two_ways_then_it_is_refused() {
        let deals = DEALS.replace(
            "[[permissions]]",
            "[[permissions]]\nname = \"read_contacts\"\ndescription = \"See people.\"\n\n[[permissions]]",
        );
        refused(
            files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", &deals)]),
            &["read_contacts is declared differently by"],
        );
        let same = DEALS.replace(
            "[[permissions]]",
            "[[permissions]]\nname = \"read_contacts\"\ndescription = \"Read contacts.\"\nmember = true\n\n[[permissions]]",
        );
        let r = registry(files(&[("contacts/v1/module.toml", CONTACTS), ("deals/v1/module.toml", &same)]));
        assert_eq!(r.permissions().len(), 3, "declared twice the same way, listed once");
    }

    #[test]
    fn given_badly_named_or_unexpected_files_then_they_are_refused() {
        for bad in [
            "migrations/1_init.surql",
            "migrations/0001-init.surql",
            "migrations/0001_Init.surql",
            "migrations/0001_init.sql",
        ] {
            let path = format!("contacts/v1/{bad}");
            refused(
                files(&[("contacts/v1/module.toml", CONTACTS), (&path, INIT)]),
                &[&format!("{path}: not a migration file name")],
            );
        }
        for bad in ["notes.txt", "seeds/demo.json", "module.json", "migrations/sub/0001_x.surql"] {
            let path = format!("contacts/v1/{bad}");
            refused(files(&[("contacts/v1/module.toml", CONTACTS), (&path, "")]), &[&path]);
        }
        refused(files(&[("contacts/v1/module.toml", CONTACTS), ("contacts/v1/notes.txt", "")]), &["unexpected file"]);
        refused(files(&[("contacts.toml", "")]), &["contacts.toml: not inside a version directory"]);
        refused(files(&[("contacts/v1/migrations/0001_init.surql", INIT)]), &["contacts/v1/module.toml: missing"]);
        refused(
            files(&[
                ("contacts/v1/module.toml", CONTACTS),
                ("contacts/v1/migrations/0001_init.surql", INIT),
                ("contacts/v1/migrations/0001_more.surql", INIT),
            ]),
            &["contacts/v1/migrations/0001_more.surql: its number is also 0001_init.surql's"],
        );
        registry(files(&[
            ("README.md", "#"),
            ("contacts/README.md", "#"),
            ("contacts/v1/README.md", "#"),
            ("contacts/v1/module.toml", CONTACTS),
        ]));
    }

    /// contacts@v2 of the upgrade tests: name split, email kept, status
    /// dropped, a new optional field, with an upgrade from v1.
    const V2: &str = r#"
name = "contacts"
version = "2.0.0"
description = "People and companies."

[[permissions]]
name = "read_contacts"
description = "Read contacts."
member = true

[[permissions]]
name = "write_contacts"
description = "Write contacts."

[tables.company]
read = "read_contacts"
write = "write_contacts"

[tables.company.fields.name]
type = "string"
required = true

[tables.contact]
read = "read_contacts"
write = "write_contacts"

[tables.contact.fields.first_name]
type = "string"
required = true

[tables.contact.fields.last_name]
type = "string"

[tables.contact.fields.email_address]
type = "string"

[tables.contact.fields.company]
type = "reference"
to = "company"

[tables.contact.fields.source]
type = "enum"
values = ["import", "web"]

[upgrade]
from = "v1"
migrations = ["0001_from_v1.surql"]
baseline = ["0001_init.surql"]

[[upgrade.transform]]
table = "contact"
op = "split"
field = "name"
into = ["first_name", "last_name"]
separator = " "

[[upgrade.transform]]
table = "contact"
op = "rename"
field = "email"
to = "email_address"

[[upgrade.transform]]
table = "contact"
op = "set"
field = "source"
value = "import"

[[upgrade.transform]]
table = "contact"
op = "drop"
field = "status"
"#;

    fn with_v2(v2: &str) -> Vec<(String, Vec<u8>)> {
        files(&[
            ("contacts/v1/module.toml", CONTACTS),
            ("contacts/v1/migrations/0001_init.surql", INIT),
            ("contacts/v2/module.toml", v2),
            ("contacts/v2/migrations/0001_init.surql", INIT),
            ("contacts/v2/migrations/0002_more.surql", INIT),
            ("contacts/v2/upgrade/0001_from_v1.surql", "REMOVE INDEX IF EXISTS x ON mod_contacts_contact;"),
        ])
    }

    #[test]
    fn given_an_upgrade_then_its_transforms_rewrite_a_record_into_the_new_shape() {
        let r = registry(with_v2(V2));
        let v2 = r.get("contacts", 2).unwrap();
        let up = v2.upgrade.as_ref().unwrap();
        assert_eq!((up.migrations.len(), up.migrations[0].name.as_str()), (1, "0001_from_v1.surql"));
        let old = r.get("contacts", 1).unwrap().table("contact").unwrap();
        let values = old
            .validate_create(&input(
                json!({"name": "Ada King Lovelace", "email": "ada@example.com", "status": "customer"}),
            ))
            .unwrap();
        let new = up.transform("contact", &values);
        assert_eq!(
            serde_json::to_value(&new).unwrap(),
            json!({"first_name": "Ada", "last_name": "King Lovelace", "email_address": "ada@example.com", "source": "import"})
        );
        let one_word = up.transform("contact", &Values::from([("name".into(), json!("Ada"))]));
        assert_eq!(serde_json::to_value(&one_word).unwrap(), json!({"first_name": "Ada", "source": "import"}));
        let set_keeps =
            up.transform("contact", &Values::from([("name".into(), json!("A B")), ("source".into(), json!("web"))]));
        assert_eq!(set_keeps["source"], json!("web"), "set only fills a missing value");
        assert_eq!(up.transform("company", &Values::from([("name".into(), json!("X"))]))["name"], json!("X"));
        let map: Map<String, Value> = new.into_iter().collect();
        v2.table("contact").unwrap().validate_create(&map).unwrap();
    }

    #[test]
    fn given_an_upgrade_from_anything_but_the_previous_version_then_it_is_refused() {
        refused(
            with_v2(&V2.replace("from = \"v1\"", "from = \"v3\"")),
            &["contacts/v2/module.toml: upgrade.from: v3 is not the previous version of contacts (v1 is)"],
        );
        refused(
            with_v2(&V2.replace("from = \"v1\"", "from = \"1\"")),
            &["upgrade.from: \"1\" is not a version like v1"],
        );
        let alone = files(&[
            ("contacts/v2/module.toml", V2),
            ("contacts/v2/migrations/0001_init.surql", INIT),
            ("contacts/v2/upgrade/0001_from_v1.surql", ""),
        ]);
        refused(alone, &["upgrade.from: there is no earlier version of contacts to upgrade from"]);
    }

    #[test]
    fn given_an_upgrade_whose_files_do_not_exist_then_it_is_refused() {
        refused(
            with_v2(&V2.replace("[\"0001_from_v1.surql\"]", "[\"0002_from_v1.surql\"]")),
            &[
                "contacts/v2/module.toml: upgrade.migrations[0]: upgrade/0002_from_v1.surql does not exist",
                "upgrade.migrations: upgrade/0001_from_v1.surql is not listed",
            ],
        );
        refused(
            with_v2(&V2.replace("baseline = [\"0001_init.surql\"]", "baseline = [\"0009_init.surql\"]")),
            &["upgrade.baseline[0]: migrations/0009_init.surql does not exist"],
        );
        refused(
            with_v2(&V2.replace("baseline = [\"0001_init.surql\"]", "baseline = [\"0002_more.surql\"]")),
            &["upgrade.baseline[0]: 0002_more.surql is out of order"],
        );
        let mut stray = contacts_with(CONTACTS);
        stray.push(("contacts/v1/upgrade/0001_x.surql".into(), Vec::new()));
        refused(stray, &["contacts/v1/upgrade/0001_x.surql: an upgrade file without [upgrade]"]);
    }

    #[test]
    fn given_a_transform_naming_a_missing_table_or_field_then_it_is_refused() {
        refused(
            with_v2(&V2.replacen("field = \"name\"", "field = \"full_name\"", 1)),
            &["upgrade.transform[0].field: contacts@v1's contact has no field full_name"],
        );
        refused(
            with_v2(&V2.replace("into = [\"first_name\", \"last_name\"]", "into = [\"first_name\", \"surname\"]")),
            &["upgrade.transform[0].into[1]: contacts@v2's contact has no field surname"],
        );
        refused(
            with_v2(&V2.replace("to = \"email_address\"", "to = \"mail\"")),
            &["upgrade.transform[1].to: contacts@v2's contact has no field mail"],
        );
        refused(
            with_v2(&V2.replacen("table = \"contact\"", "table = \"person\"", 1)),
            &["upgrade.transform[0].table: person is not a table of both contacts@v1 and contacts@v2"],
        );
        refused(
            with_v2(&V2.replace("value = \"import\"", "value = \"fax\"")),
            &["upgrade.transform[2].value: not a valid value of source: \"fax\" is not one of import, web"],
        );
        refused(
            with_v2(&V2.replace("op = \"drop\"", "op = \"delete\"")),
            &["upgrade.transform[3]", "unknown variant `delete`"],
        );
    }

    #[test]
    fn given_an_upgrade_that_would_leave_a_record_unfit_then_it_is_refused() {
        let keeps_status = V2.replace("op = \"drop\"\nfield = \"status\"", "op = \"drop\"\nfield = \"email\"");
        refused(
            with_v2(&keeps_status),
            &[
                "upgrade.transform: field status of contacts@v1's contact is not in this version: rename, split or drop it",
            ],
        );
        let required = V2.replace("[tables.contact.fields.last_name]\ntype = \"string\"\n", "[tables.contact.fields.last_name]\ntype = \"string\"\n\n[tables.contact.fields.title]\ntype = \"string\"\nrequired = true\n");
        refused(
            with_v2(&required),
            &["upgrade.transform: required field title of contact has no value in records of contacts@v1"],
        );
        let dropped_table = V2
            .replace("[tables.company]", "[tables.firm]")
            .replace("[tables.company.fields.name]", "[tables.firm.fields.name]");
        refused(with_v2(&dropped_table), &["upgrade: table company of contacts@v1 is not in this version"]);
    }

    #[test]
    fn given_seeds_then_they_are_validated_like_records() {
        let seeds = |main: &str, temp: &str| {
            let mut f = contacts_with(CONTACTS);
            f.push(("contacts/v1/seeds/main.json".into(), main.as_bytes().to_vec()));
            f.push(("contacts/v1/seeds/temp.json".into(), temp.as_bytes().to_vec()));
            f
        };
        let main = r#"[{"table": "company", "key": "acme", "fields": {"name": "Acme"}},
                       {"table": "contact", "key": "ada", "fields": {"name": "Ada", "company": {"seed": "acme"}}}]"#;
        let temp = r#"[{"table": "contact", "key": "bob", "fields": {"name": "Bob", "company": {"seed": "acme"}}}]"#;
        let r = registry(seeds(main, temp));
        let v = r.get("contacts", 1).unwrap();
        let contact = v.table("contact").unwrap();
        assert_eq!(v.temp_seeds[0].seed_references(contact), [("company".to_owned(), "acme".to_owned())]);
        let id = "0190f2a4-7d2e-7c1a-9a3b-0123456789ab";
        let values =
            v.main_seeds[1].values(contact, |t, k| (t == "company" && k == "acme").then(|| id.to_owned())).unwrap();
        assert_eq!(serde_json::to_value(values).unwrap(), json!({"name": "Ada", "company": id, "status": "lead"}));

        let bad = r#"[{"table": "contact", "key": "x", "fields": {"name": "X", "status": "vip"}}]"#;
        refused(seeds(bad, "[]"), &["contacts/v1/seeds/main.json: [0].fields.status: \"vip\" is not one of"]);
        let twice = r#"[{"table": "company", "key": "a", "fields": {"name": "A"}}, {"table": "company", "key": "a", "fields": {"name": "B"}}]"#;
        refused(seeds(twice, "[]"), &["seeds/main.json: [1].key: company \"a\" is seeded twice"]);
        refused(
            seeds(main, r#"[{"table": "company", "key": "acme", "fields": {"name": "Other"}}]"#),
            &["seeds/temp.json: [0].key: company \"acme\" is seeded twice"],
        );
        let unknown = r#"[{"table": "contact", "key": "x", "fields": {"name": "X", "company": {"seed": "nope"}}}]"#;
        refused(
            seeds(unknown, "[]"),
            &["seeds/main.json: [0].fields.company: no earlier seed record \"nope\" of company"],
        );
        let forward = r#"[{"table": "contact", "key": "x", "fields": {"name": "X", "company": {"seed": "later"}}},
                          {"table": "company", "key": "later", "fields": {"name": "L"}}]"#;
        refused(seeds(forward, "[]"), &["[0].fields.company: no earlier seed record \"later\""]);
        let raw_id = format!(r#"[{{"table": "contact", "key": "x", "fields": {{"name": "X", "company": "{id}"}}}}]"#);
        refused(seeds(&raw_id, "[]"), &["[0].fields.company: a reference in a seed is {\"seed\": \"<key>\"}"]);
        let same_name = r#"[{"table": "company", "key": "b", "fields": {"name": "Acme"}}]"#;
        refused(
            seeds(main, same_name),
            &["seeds/temp.json: [0].fields.name: unique, and company \"acme\" has the same value"],
        );
        refused(
            seeds(r#"[{"table": "firm", "key": "a", "fields": {}}]"#, "[]"),
            &["[0].table: \"firm\" is not a table of this version"],
        );
        refused(
            seeds(r#"[{"table": "company", "key": "Big Co", "fields": {"name": "B"}}]"#, "[]"),
            &["[0].key: \"Big Co\" is not a seed key"],
        );
        refused(
            seeds(r#"[{"table": "company", "key": "a", "fields": {"name": "A"}, "x": 1}]"#, "[]"),
            &["seeds/main.json: line 1: unknown field `x`"],
        );
        refused(
            seeds(r#"[{"table": "company", "key": "a", "fields": {"name": "A", "size": 3}}]"#, "[]"),
            &["[0].fields.size: is not a field of company"],
        );
    }

    #[test]
    fn given_problems_in_several_files_then_all_are_reported_one_per_line() {
        let bad_type = format!("{CONTACTS}\n[tables.contact.fields.x]\ntype = \"strin\"\n");
        let bad_deal = DEALS.replace("contacts@v1", "contacts@v9");
        let err = refused(
            files(&[
                ("contacts/v1/module.toml", &bad_type),
                ("deals/v1/module.toml", &bad_deal),
                ("contacts/1/module.toml", ""),
            ]),
            &[
                "contacts/1: ",
                "contacts/v1/module.toml: tables.contact.fields.x.type",
                "deals/v1/module.toml: depends_on[0]",
            ],
        );
        assert_eq!(err.lines().count(), 3, "{err}");
    }

    #[test]
    fn given_a_broken_field_then_the_seeds_that_set_it_get_no_second_message() {
        let bad_type = CONTACTS.replace("type = \"enum\"", "type = \"choice\"");
        let mut f = contacts_with(&bad_type);
        let seeds = r#"[{"table": "contact", "key": "ada", "fields": {"name": "Ada", "status": "lead"}}]"#;
        f.push(("contacts/v1/seeds/main.json".into(), seeds.as_bytes().to_vec()));
        let err = refused(f, &["tables.contact.fields.status.type: unknown field type \"choice\""]);
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn given_a_broken_dependency_then_its_dependents_get_no_second_message() {
        let bad_type = format!("{CONTACTS}\n[tables.contact.fields.x]\ntype = \"strin\"\n");
        let err = refused(files(&[("contacts/v1/module.toml", &bad_type), ("deals/v1/module.toml", DEALS)]), &[]);
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn the_committed_json_schema_of_module_toml_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/module.schema.json");
        let generated = format!("{}\n", serde_json::to_string_pretty(&manifest_json_schema()).unwrap());
        if std::env::var("CANOPY_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "schemas/module.schema.json is out of date: run `CANOPY_BLESS=1 cargo test -p canopy-actors --lib manifest`"
        );
        let schema = manifest_json_schema();
        assert_eq!(schema["properties"]["tables"]["additionalProperties"]["$ref"], "#/$defs/Table");
        assert!(schema.to_string().contains("\"reference\""), "the field types are listed");
    }

    #[test]
    fn full_versions_are_major_minor_patch_without_leading_zeros() {
        for ok in ["1", "1.4", "1.0.1", "0.1", "12.0.0"] {
            assert_eq!(Registry::parse_full_version(ok).map(|(_, r)| r), Some(ok.to_owned()), "{ok}");
        }
        assert_eq!(Registry::parse_full_version("2.3").unwrap().0, 2);
        for bad in ["", "v1.4", "1.", "1.2.3.4", "01.2", "1.02", "1.x", " 1"] {
            assert_eq!(Registry::parse_full_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn module_refs_are_written_name_at_v_major() {
        let r = ModuleRef::parse("contacts@v12").unwrap();
        assert_eq!((r.name.as_str(), r.major, r.to_string()), ("contacts", 12, "contacts@v12".to_owned()));
        for bad in
            ["contacts", "contacts@1", "contacts@v0", "contacts@v01", "Contacts@v1", "con_tacts@v1", "c@v1", "@v1"]
        {
            assert!(ModuleRef::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"contacts@v12\"");
        assert_eq!(serde_json::from_str::<ModuleRef>(&json).unwrap(), r);
        assert!(serde_json::from_str::<ModuleName>("\"x_y\"").is_err());
        let long = "a".repeat(500);
        assert!(ModuleName::parse(&long).unwrap_err().0.len() < 200, "the message is bounded");
    }

    // --- Record values -----------------------------------------------------

    #[test]
    fn given_a_value_of_every_type_when_created_then_each_is_stored_canonical() {
        let t = table(EVERY_TYPE, "thing");
        let values = t
            .validate_create(&input(json!({
                "label": "héllo",
                "body": "line one\n\tline two",
                "count": -42,
                "price": "0012.500",
                "done": true,
                "due": "2025-01-31T10:30:00.123456+01:00",
                "colour": "green",
                "parent": "0190F2A4-7D2E-7C1A-9A3B-0123456789AB",
            })))
            .unwrap();
        assert_eq!(
            serde_json::to_value(values).unwrap(),
            json!({
                "label": "héllo",
                "body": "line one\n\tline two",
                "count": -42,
                "price": "12.5",
                "done": true,
                "due": "2025-01-31T09:30:00.123Z",
                "colour": "green",
                "parent": "0190f2a4-7d2e-7c1a-9a3b-0123456789ab",
            })
        );
    }

    #[test]
    fn given_a_required_field_when_it_is_absent_or_null_then_the_create_is_refused() {
        let t = table(EVERY_TYPE, "thing");
        assert_eq!(
            t.validate_create(&Map::new()).unwrap_err(),
            FieldError { field: "label".into(), problem: "is required".into() }
        );
        assert_eq!(t.validate_create(&input(json!({"label": null}))).unwrap_err().to_string(), "label: is required");
    }

    #[test]
    fn given_an_absent_field_with_a_default_when_created_then_the_default_is_stored() {
        let t = table(EVERY_TYPE, "thing");
        let values = t.validate_create(&input(json!({"label": "a"}))).unwrap();
        assert_eq!(serde_json::to_value(&values).unwrap(), json!({"label": "a", "count": 3}));
        let values = t.validate_create(&input(json!({"label": "a", "count": null, "done": null}))).unwrap();
        assert_eq!(serde_json::to_value(&values).unwrap(), json!({"label": "a"}), "null is no value, never stored");
        let contacts = table(CONTACTS, "contact");
        let values = contacts.validate_create(&input(json!({"name": "Ada"}))).unwrap();
        assert_eq!(values["status"], json!("lead"));
    }

    #[test]
    fn given_a_string_longer_than_its_max_length_in_chars_then_it_is_refused() {
        let t = table(EVERY_TYPE, "thing");
        assert!(t.validate_create(&input(json!({"label": "ééééé"}))).is_ok(), "five chars, ten bytes");
        let err = t.validate_create(&input(json!({"label": "éééééé"}))).unwrap_err();
        assert_eq!(err.to_string(), "label: is longer than 5 characters");
        let contacts = table(CONTACTS, "contact");
        assert!(contacts.validate_create(&input(json!({"name": "x".repeat(255)}))).is_ok(), "255 by default");
        assert!(contacts.validate_create(&input(json!({"name": "x".repeat(256)}))).is_err());
    }

    #[test]
    fn given_control_characters_then_a_string_refuses_all_and_a_text_all_but_newline_and_tab() {
        let t = table(EVERY_TYPE, "thing");
        for bad in ["a\nb", "a\tb", "a\u{0}", "a\u{1b}[2J"] {
            let err = t.validate_create(&input(json!({"label": bad}))).unwrap_err();
            assert_eq!(err.problem, "contains a control character", "{bad:?}");
        }
        for bad in ["a\rb", "\u{7}"] {
            assert!(t.validate_create(&input(json!({"label": "a", "body": bad}))).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn given_an_enum_value_not_among_its_values_then_it_is_refused() {
        let t = table(EVERY_TYPE, "thing");
        let err = t.validate_create(&input(json!({"label": "a", "colour": "blue"}))).unwrap_err();
        assert_eq!(err.to_string(), "colour: \"blue\" is not one of red, green");
        let err = t.validate_create(&input(json!({"label": "a", "colour": 1}))).unwrap_err();
        assert_eq!(err.to_string(), "colour: expected one of red, green");
    }

    #[test]
    fn given_an_unknown_field_then_the_create_and_the_patch_are_refused() {
        let t = table(EVERY_TYPE, "thing");
        let err = t.validate_create(&input(json!({"label": "a", "size": 1}))).unwrap_err();
        assert_eq!(err.to_string(), "size: is not a field of thing");
        let err = t.validate_create(&input(json!({"label": "a", "id": "x"}))).unwrap_err();
        assert_eq!(err.field, "id", "reserved names are no fields of the input");
        let err = t.validate_patch(&Values::new(), &input(json!({"origin": "user"}))).unwrap_err();
        assert_eq!(err.field, "origin");
    }

    #[test]
    fn given_a_value_of_the_wrong_type_then_the_problem_names_the_expected_type() {
        let t = table(EVERY_TYPE, "thing");
        let cases = [
            ("label", json!(5), "expected a string"),
            ("body", json!(["x"]), "expected a string"),
            ("count", json!("3"), "expected an integer"),
            ("count", json!(3.5), "expected an integer"),
            ("count", json!(u64::MAX), "is out of range (a 64-bit signed integer)"),
            ("price", json!(true), "expected a decimal number"),
            ("price", json!("12,5"), "is not a decimal number"),
            ("done", json!("true"), "expected true or false"),
            ("due", json!("2025-01-31"), "expected an RFC 3339 date and time"),
            ("due", json!("31.01.2025 10:00"), "expected an RFC 3339 date and time"),
            ("due", json!(1738315800), "expected an RFC 3339 date and time"),
            ("parent", json!("not-a-uuid"), "expected the id (a UUID) of a thing record"),
            ("parent", json!(7), "expected the id (a UUID) of a thing record"),
        ];
        for (field, value, problem) in cases {
            let mut m = input(json!({"label": "a"}));
            m.insert(field.into(), value.clone());
            let err = t.validate_create(&m).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.problem.starts_with(problem), "{field} = {value}: {}", err.problem);
        }
    }

    #[test]
    fn given_decimals_in_any_spelling_then_they_become_one_canonical_string() {
        let cases = [
            (json!("12.50"), "12.5"),
            (json!(12.5), "12.5"),
            (json!(7), "7"),
            (json!("-0"), "0"),
            (json!("-0.000"), "0"),
            (json!("+3.10"), "3.1"),
            (json!("0.000000001"), "0.000000001"),
            (json!("1e3"), "1000"),
            (json!("1.5E-3"), "0.0015"),
            (json!(-0.25), "-0.25"),
            (json!("000123"), "123"),
            (json!("999999999999999999.999999999"), "999999999999999999.999999999"),
            (json!("1.2300000000000000000000"), "1.23"),
        ];
        for (raw, canonical) in cases {
            assert_eq!(canonical_decimal_of(&raw), Ok(canonical.to_owned()), "{raw}");
        }
        for (raw, problem) in [
            (json!("1234567890123456789"), "has more than 18 digits before the decimal point"),
            (json!("0.0000000001"), "has more than 9 digits after the decimal point"),
            (json!(0.1 + 0.2), "has more than 9 digits after the decimal point"),
            (json!("1e999"), "has more than 18 digits before the decimal point"),
            (json!("1e9999"), "is not a decimal number"),
            (json!("1."), "is not a decimal number"),
            (json!(".5"), "is not a decimal number"),
            (json!("NaN"), "is not a decimal number"),
            (json!(" 1"), "is not a decimal number"),
            (json!("1_000"), "is not a decimal number"),
            (json!(""), "is not a decimal number"),
        ] {
            assert_eq!(canonical_decimal_of(&raw), Err(problem.to_owned()), "{raw}");
        }
    }

    fn canonical_decimal_of(v: &Value) -> Result<String, String> {
        let f = Field {
            name: "d".into(),
            kind: FieldType::Decimal,
            required: false,
            unique: false,
            max_length: None,
            default: None,
            personal: false,
        };
        f.parse_value(v).map(|v| v.as_str().unwrap().to_owned())
    }

    #[test]
    fn given_datetimes_with_any_offset_then_they_are_stored_in_utc() {
        let f = Field {
            name: "d".into(),
            kind: FieldType::Datetime,
            required: false,
            unique: false,
            max_length: None,
            default: None,
            personal: false,
        };
        let cases = [
            ("2025-01-31T10:30:00+01:00", "2025-01-31T09:30:00Z"),
            ("2025-01-31T23:30:00-02:00", "2025-02-01T01:30:00Z"),
            ("2025-01-31T09:30:00.5Z", "2025-01-31T09:30:00.500Z"),
            ("2025-01-31T09:30:00.000Z", "2025-01-31T09:30:00Z"),
            ("2025-01-31t09:30:00.9999z", "2025-01-31T09:30:00.999Z"),
            // RFC 3339 allows a space for the `T`.
            ("2025-01-31 09:30:00Z", "2025-01-31T09:30:00Z"),
        ];
        for (raw, canonical) in cases {
            assert_eq!(f.parse_value(&json!(raw)), Ok(json!(canonical)), "{raw}");
        }
        for bad in ["2025-02-30T00:00:00Z", "2025-01-31T09:30:00", "0000-01-01T00:30:00+01:00", "2025-01-31T09:30Z"] {
            assert!(f.parse_value(&json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn given_surrealql_in_a_value_then_it_is_only_a_string() {
        let t = table(CONTACTS, "contact");
        let sql = "'; REMOVE TABLE x; --";
        let values = t.validate_create(&input(json!({"name": sql}))).unwrap();
        assert_eq!(values["name"], json!(sql));
        let err = t.validate_create(&input(json!({"name": "Ada", "company": sql}))).unwrap_err();
        assert_eq!(err.to_string(), "company: expected the id (a UUID) of a company record");
    }

    #[test]
    fn given_a_patch_then_only_its_keys_change_and_null_clears_what_is_not_required() {
        let t = table(EVERY_TYPE, "thing");
        let current = t.validate_create(&input(json!({"label": "a", "done": true, "colour": "red"}))).unwrap();
        let patched = t.validate_patch(&current, &input(json!({"colour": null, "price": 1.10}))).unwrap();
        assert_eq!(
            serde_json::to_value(&patched).unwrap(),
            json!({"label": "a", "count": 3, "done": true, "price": "1.1"})
        );
        let err = t.validate_patch(&current, &input(json!({"label": null}))).unwrap_err();
        assert_eq!(err.to_string(), "label: is required and cannot be cleared");
        let err = t.validate_patch(&current, &input(json!({"count": "x"}))).unwrap_err();
        assert_eq!(err.to_string(), "count: expected an integer");
        assert_eq!(t.validate_patch(&current, &Map::new()).unwrap(), current, "an empty patch changes nothing");
    }

    #[test]
    fn given_long_input_then_messages_repeat_at_most_64_characters_of_it() {
        let t = table(EVERY_TYPE, "thing");
        let long = "z".repeat(10_000);
        let mut m = input(json!({"label": "a"}));
        m.insert(long.clone(), json!(1));
        let err = t.validate_create(&m).unwrap_err();
        assert!(err.field.chars().count() <= 65, "{}", err.field);
        let err = t.validate_create(&input(json!({"label": "a", "colour": long}))).unwrap_err();
        assert!(err.problem.len() < 120, "{}", err.problem);
        let err = t.validate_create(&input(json!({"label": "a", "parent": long}))).unwrap_err();
        assert!(!err.problem.contains("zzz"), "{}", err.problem);
        let err = t.validate_create(&input(json!({"label": "\u{1b}[31m"}))).unwrap_err();
        assert!(!err.to_string().contains('\u{1b}'));
    }
}

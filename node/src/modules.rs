//! The node's module versions: those embedded in the binary (`schemas/modules`
//! at build time, by `build.rs`) or a directory that replaces them, checked as
//! a whole (`Registry::from_files`) and then on a throwaway in-memory
//! SurrealDB, where every version's migrations must run and leave the
//! storage table of every table its manifest declares.

use std::path::Path;
use std::sync::Arc;

use actors::domain::manifest::{ManifestError, Migration, ModuleVersion, Registry};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

mod generated {
    // `pub const EMBEDDED: &[(&str, &[u8])]`: (path relative to the modules
    // root with `/`, bytes), sorted by path.
    include!(concat!(env!("OUT_DIR"), "/embedded_modules.rs"));
}

/// The namespace of the throwaway database the migrations are checked on.
const CHECK_NAMESPACE: &str = "modules_check";

/// The module files built into the binary, as `Registry::from_files` takes them.
pub fn embedded() -> Vec<(String, Vec<u8>)> {
    generated::EMBEDDED.iter().map(|(path, bytes)| ((*path).to_owned(), bytes.to_vec())).collect()
}

/// Every file under `root`, with its path relative to `root` joined by `/`,
/// sorted by path. Hidden files and directories (a name starting with `.`,
/// like an editor's or the OS's litter) are left out, as the build leaves
/// them out of the embedded modules.
pub fn read_dir(root: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(std::io::Error::other(format!("{} is not a UTF-8 name", entry.path().display())));
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else {
                out.push((rel, std::fs::read(entry.path())?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The registry of the module versions in `dir`, or of the embedded ones when
/// `None`, after every check of the format and of the migrations (see the
/// module's doc). Errors name the file and the problem, one line each (a
/// SurrealDB message may add lines of its own, indented).
pub async fn load(dir: Option<&Path>) -> Result<Arc<Registry>, ManifestError> {
    let files = match dir {
        Some(d) => read_dir(d).map_err(|e| ManifestError(format!("{}: {e}", d.display())))?,
        None => embedded(),
    };
    let registry = Registry::from_files(files)?;
    check_migrations(&registry).await?;
    Ok(Arc::new(registry))
}

/// `canopy modules check`: loads the module versions like `load` and lists
/// them, one line each, or says what is wrong.
pub async fn check(dir: Option<&Path>) -> Result<String, ManifestError> {
    let registry = load(dir).await?;
    let mut out = String::new();
    for v in registry.all() {
        out.push_str(&summary(v));
        out.push('\n');
    }
    let from = dir.map_or_else(|| "the embedded modules".to_owned(), |d| d.display().to_string());
    let permissions: Vec<&str> = registry.permissions().iter().map(|p| p.name.as_str()).collect();
    out.push_str(&format!(
        "{} module version(s) from {from}; permissions: {}\n",
        registry.all().count(),
        if permissions.is_empty() { "none".to_owned() } else { permissions.join(", ") }
    ));
    Ok(out)
}

/// `contacts@v2 (2.0.0): 2 tables, 2 migrations, seeds 2 main + 7 temp, upgrade from v1 (…)`.
fn summary(v: &ModuleVersion) -> String {
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut line = format!(
        "{} ({}): {}, {}, seeds {} main + {} temp",
        v.key(),
        v.full_version,
        count(v.tables.len(), "table"),
        count(v.migrations.len(), "migration"),
        v.main_seeds.len(),
        v.temp_seeds.len()
    );
    if let Some(up) = &v.upgrade {
        line.push_str(&format!(
            ", upgrade from v{} ({}, {})",
            up.from,
            count(up.migrations.len(), "migration"),
            count(up.transforms.len(), "transform")
        ));
    }
    if !v.depends_on.is_empty() {
        let deps: Vec<String> = v.depends_on.iter().map(ToString::to_string).collect();
        line.push_str(&format!(", depends on {}", deps.join(", ")));
    }
    line
}

/// Runs every version's migrations on a fresh in-memory SurrealDB, one
/// database per version, and for a version with an upgrade also the path a
/// tenant of the previous version takes (its migrations, the upgrade's, then
/// this version's past the baseline) in a database of its own; afterwards each
/// manifest table's storage table must exist. Every problem is reported.
async fn check_migrations(registry: &Registry) -> Result<(), ManifestError> {
    let db = surrealdb::engine::any::connect("mem://")
        .await
        .map_err(|e| ManifestError(format!("opening a throwaway SurrealDB to check the migrations: {e}")))?;
    let mut errors = Vec::new();
    for v in registry.all() {
        let dir = format!("{}/v{}", v.name, v.major);
        let fresh: Vec<(String, &Migration)> =
            v.migrations.iter().map(|m| (format!("{dir}/migrations/{}", m.name), m)).collect();
        if let Err(e) = run_and_inspect(&db, &format!("{}_v{}", v.name, v.major), &fresh, v, "").await {
            errors.push(e);
        }
        let Some(up) = &v.upgrade else { continue };
        let Some(old) = registry.get(v.name.as_str(), up.from) else { continue };
        let mut path: Vec<(String, &Migration)> =
            old.migrations.iter().map(|m| (format!("{}/v{}/migrations/{}", old.name, old.major, m.name), m)).collect();
        path.extend(up.migrations.iter().map(|m| (format!("{dir}/upgrade/{}", m.name), m)));
        path.extend(fresh.iter().filter(|(_, m)| !up.baseline.contains(&m.name)).map(|(f, m)| (f.clone(), *m)));
        let context = format!(" after the upgrade from v{}", up.from);
        if let Err(e) = run_and_inspect(&db, &format!("{}_v{}_upgrade", v.name, v.major), &path, v, &context).await {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ManifestError(errors.join("\n"))) }
}

/// Runs `migrations` (file, migration) in order on database `name`, then
/// checks that every table of `v` has its storage table there.
async fn run_and_inspect(
    db: &Surreal<Any>,
    name: &str,
    migrations: &[(String, &Migration)],
    v: &ModuleVersion,
    context: &str,
) -> Result<(), String> {
    let surreal = |what: &str, e: surrealdb::Error| format!("{what}: {}", indented(&e.to_string()));
    db.use_ns(CHECK_NAMESPACE).use_db(name).await.map_err(|e| surreal("opening a throwaway database", e))?;
    for (file, m) in migrations {
        db.query(m.sql.as_str()).await.and_then(|r| r.check()).map_err(|e| surreal(file, e))?;
    }
    let mut res = db.query("INFO FOR DB").await.map_err(|e| surreal("INFO FOR DB", e))?;
    let info: Option<serde_json::Value> = res.take(0).map_err(|e| surreal("INFO FOR DB", e))?;
    let tables = info.as_ref().and_then(|i| i.get("tables")).and_then(serde_json::Value::as_object);
    let missing: Vec<String> = v
        .tables
        .values()
        .map(|t| (t.name.as_str(), t.storage_name(&v.name)))
        .filter(|(_, storage)| !tables.is_some_and(|ts| ts.contains_key(storage)))
        .map(|(t, storage)| format!("tables.{t}: no migration defines {storage}{context}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let file = format!("{}/v{}/module.toml", v.name, v.major);
        Err(missing.iter().map(|m| format!("{file}: {m}")).collect::<Vec<_>>().join("\n"))
    }
}

/// A multi-line message with its later lines indented, so that each problem
/// of a report still starts a line of its own at the left.
fn indented(message: &str) -> String {
    message.trim_end().replace('\n', "\n    ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of the shipped modules, with `edit(path, text)` applied.
    fn shipped_with(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
        let dir = tempfile::TempDir::new().unwrap();
        for (rel, bytes) in embedded() {
            let target = dir.path().join(&rel);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, edit(&rel, String::from_utf8(bytes).unwrap())).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn given_the_shipped_modules_when_loaded_then_every_version_passes_its_migrations() {
        let registry = load(None).await.unwrap();
        let keys: Vec<String> = registry.all().map(|v| v.key().to_string()).collect();
        assert_eq!(keys, ["contacts@v1", "contacts@v2", "deals@v1"]);
        let report = check(None).await.unwrap();
        assert!(report.contains("contacts@v1 (1.2.0): 2 tables, 1 migration,"), "{report}");
        assert!(report.contains("upgrade from v1 (1 migration, 2 transforms)"), "{report}");
        assert!(
            report.contains("deals@v1 (1.0.0): 1 table, 1 migration, seeds 0 main + 4 temp, depends on contacts@v1")
        );
    }

    #[tokio::test]
    async fn given_a_directory_when_read_then_it_holds_what_is_embedded_without_hidden_files() {
        let dir = shipped_with(|_, text| text);
        std::fs::write(dir.path().join("contacts/v1/.DS_Store"), "litter").unwrap();
        assert_eq!(read_dir(dir.path()).unwrap(), embedded());
        let from_dir = load(Some(dir.path())).await.unwrap();
        assert_eq!(from_dir.all().count(), 3);
        let missing = load(Some(&dir.path().join("nowhere"))).await.unwrap_err().0;
        assert!(missing.contains("nowhere"), "{missing}");
    }

    #[tokio::test]
    async fn given_a_migration_with_a_syntax_error_then_the_registry_is_refused_naming_the_file() {
        let dir = shipped_with(|rel, text| match rel {
            "deals/v1/migrations/0001_init.surql" => text.replace("DEFINE INDEX", "DEFINE INDEKS"),
            _ => text,
        });
        let err = load(Some(dir.path())).await.unwrap_err().0;
        assert!(err.starts_with("deals/v1/migrations/0001_init.surql: "), "{err}");
        assert!(err.contains("INDEKS"), "SurrealDB's message: {err}");
    }

    #[tokio::test]
    async fn given_a_manifest_table_no_migration_defines_then_the_registry_is_refused() {
        let dir = shipped_with(|rel, text| match rel {
            "contacts/v1/migrations/0001_init.surql" => {
                text.replace("DEFINE TABLE IF NOT EXISTS mod_contacts_company SCHEMALESS;", "").replace(
                    "DEFINE INDEX IF NOT EXISTS mod_contacts_company_name ON mod_contacts_company FIELDS name;",
                    "",
                )
            }
            _ => text,
        });
        let err = load(Some(dir.path())).await.unwrap_err().0;
        assert!(
            err.contains("contacts/v1/module.toml: tables.company: no migration defines mod_contacts_company"),
            "{err}"
        );
        // contacts@v2's upgrade path starts from v1's migrations, and its
        // upgrade migration does not define the table either.
        assert!(err.contains("mod_contacts_company after the upgrade from v1"), "{err}");
    }

    #[tokio::test]
    async fn given_an_upgrade_migration_that_fails_on_the_previous_schema_then_it_is_refused() {
        let dir = shipped_with(|rel, text| match rel {
            "contacts/v2/upgrade/0001_from_v1.surql" => format!("{text}\nTHROW \"not on v1\";\n"),
            _ => text,
        });
        let err = load(Some(dir.path())).await.unwrap_err().0;
        assert!(err.starts_with("contacts/v2/upgrade/0001_from_v1.surql: "), "{err}");
        assert!(err.contains("not on v1"), "{err}");
    }

    #[tokio::test]
    async fn given_a_format_error_then_no_database_is_needed_to_refuse_it() {
        let dir = shipped_with(|rel, text| match rel {
            "deals/v1/module.toml" => text.replace("contacts@v1", "contacts@v9"),
            _ => text,
        });
        let err = check(Some(dir.path())).await.unwrap_err().0;
        assert!(err.contains("deals/v1/module.toml: depends_on[0]: contacts@v9 does not exist"), "{err}");
    }
}

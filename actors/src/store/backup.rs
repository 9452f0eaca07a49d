//! Backups of one tenant in the object store `backups`, and restoring one as a
//! new tenant (a clone: the log is append-only, so the original stays).
//!
//! A backup is JSON Lines: a header, the tenant's keys as the `keys` bucket
//! holds them (wrapped under the master key and their names, never in clear),
//! the directory's events about the tenant, and every event of the tenant's
//! scope in log order, sealed fields still sealed. Only a node with the same
//! master key can restore it.
//!
//! A restore re-appends the events under the new slug: subjects and envelopes
//! name the new tenant, each key is stored again under its new name (the same
//! secret, so keyed hashes such as email claims still match), and every sealed
//! value is sealed again under its key's new name (a key's name is bound into
//! each seal). A person erased before the backup stays erased: their key is
//! gone, and their sealed values only change name. Sessions are left out: the
//! clone starts with none, so no refresh token of the original works in it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ids::CommandId;
use crate::domain::tenant::{Scope, TenantId};
use crate::store::event_store::{
    Envelope, EventStore, Pending, StoreError, StoreErrorKind, aggregate_filter, event_subject, scope_filter,
};
use crate::store::seal::{DataKey, KeyRing, Sealed, person_key_name, tenant_key_name};

/// The object store of backups.
pub const BUCKET: &str = "backups";
const FORMAT: &str = "canopy-backup/1";
/// Events appended per atomic batch while restoring (nats-server takes at most 1,000).
const RESTORE_BATCH: usize = 500;
/// Event types a restore leaves out: the clone starts without sessions.
const LEFT_OUT: [&str; 3] = ["SessionStarted", "SessionRefreshed", "SessionRevoked"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Header { format: String, tenant: String, last_seq: u64 },
    Key { name: String, wrapped: String },
    Directory { envelope: Envelope },
    Event { envelope: Envelope },
}

/// A backup, read.
#[derive(Debug, Clone)]
pub struct Backup {
    pub tenant: TenantId,
    pub last_seq: u64,
    keys: Vec<(String, Vec<u8>)>,
    directory: Vec<Envelope>,
    events: Vec<Envelope>,
}

/// A backup, written.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub events: u64,
    pub last_seq: u64,
}

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, detail)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, e.to_string())
}

/// Creates the object store if it is missing.
pub async fn ensure_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<async_nats::jetstream::object_store::ObjectStore, StoreError> {
    if let Ok(store) = js.get_object_store(BUCKET).await {
        return Ok(store);
    }
    js.create_object_store(async_nats::jetstream::object_store::Config {
        bucket: BUCKET.to_owned(),
        description: Some("Tenant backups (canopy-backup/1, JSON Lines)".into()),
        num_replicas: replicas.max(1),
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(unavailable)
}

/// Writes everything of `tenant` into one backup.
pub async fn export(store: &EventStore, keys: &KeyRing, tenant: &TenantId) -> Result<Exported, StoreError> {
    let scope = Scope::Tenant(tenant.clone());
    let events = store.load(&scope_filter(&scope), 0).await?;
    let directory = store.load(&aggregate_filter(&Scope::Platform, "tenant", tenant.as_str()), 0).await?;
    let last_seq = events.iter().chain(directory.iter()).map(|s| s.seq).max().unwrap_or(0);
    let key_error = |e: crate::store::seal::SealError| StoreError::new(StoreErrorKind::Unavailable, e.to_string());
    let mut names = keys.names(&format!("person.{}.", scope.token())).await.map_err(key_error)?;
    names.push(tenant_key_name(&scope));
    let mut lines = vec![Line::Header { format: FORMAT.into(), tenant: tenant.to_string(), last_seq }];
    for name in names {
        // A destroyed key (an erased person's) has nothing to carry.
        if let Some(wrapped) = keys.wrapped(&name).await.map_err(key_error)? {
            lines.push(Line::Key { name, wrapped: B64.encode(wrapped) });
        }
    }
    lines.extend(directory.into_iter().map(|s| Line::Directory { envelope: s.envelope }));
    let count = events.len() as u64;
    lines.extend(events.into_iter().map(|s| Line::Event { envelope: s.envelope }));
    let mut bytes = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut bytes, line).map_err(|e| corrupt(e.to_string()))?;
        bytes.push(b'\n');
    }
    Ok(Exported { bytes, events: count, last_seq })
}

/// Stores a backup's bytes as `backup_id`.
pub async fn put(
    bucket: &async_nats::jetstream::object_store::ObjectStore,
    backup_id: &str,
    bytes: Vec<u8>,
) -> Result<u64, StoreError> {
    let size = bytes.len() as u64;
    let mut reader = std::io::Cursor::new(bytes);
    bucket.put(backup_id, &mut reader).await.map_err(unavailable)?;
    Ok(size)
}

/// A backup's bytes, if it exists.
pub async fn get(
    bucket: &async_nats::jetstream::object_store::ObjectStore,
    backup_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    use tokio::io::AsyncReadExt;
    match bucket.get(backup_id).await {
        Ok(mut object) => {
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.map_err(unavailable)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Removes a backup's object (gone already is fine).
pub async fn remove(
    bucket: &async_nats::jetstream::object_store::ObjectStore,
    backup_id: &str,
) -> Result<(), StoreError> {
    match bucket.delete(backup_id).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == async_nats::jetstream::object_store::DeleteErrorKind::NotFound => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

impl Backup {
    pub fn parse(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header: Line = serde_json::from_slice(lines.next().ok_or_else(|| corrupt("an empty backup"))?)
            .map_err(|e| corrupt(e.to_string()))?;
        let Line::Header { format, tenant, last_seq } = header else { return Err(corrupt("no header")) };
        if format != FORMAT {
            return Err(corrupt(format!("unknown backup format {format}")));
        }
        let tenant = TenantId::parse(&tenant).map_err(|e| corrupt(e.to_string()))?;
        let mut backup = Backup { tenant, last_seq, keys: Vec::new(), directory: Vec::new(), events: Vec::new() };
        for line in lines {
            match serde_json::from_slice::<Line>(line).map_err(|e| corrupt(e.to_string()))? {
                Line::Header { .. } => return Err(corrupt("a second header")),
                Line::Key { name, wrapped } => {
                    backup.keys.push((name, B64.decode(wrapped).map_err(|e| corrupt(e.to_string()))?));
                }
                Line::Directory { envelope } => backup.directory.push(envelope),
                Line::Event { envelope } => {
                    if envelope.tenant != backup.tenant.as_str() {
                        return Err(corrupt("an event of another tenant"));
                    }
                    backup.events.push(envelope);
                }
            }
        }
        Ok(backup)
    }

    /// The tenant's name and first owner as the directory had them last.
    pub fn tenant_name_and_owner(&self) -> Option<(String, String)> {
        let mut name = None;
        let mut owner = None;
        for e in &self.directory {
            match e.event_type.as_str() {
                "TenantCreated" => {
                    owner = e.data.get("owner_account_id").and_then(Value::as_str).map(str::to_owned);
                    name = e.data.get("name").and_then(Value::as_str).map(str::to_owned);
                }
                "TenantRenamed" => name = e.data.get("name").and_then(Value::as_str).map(str::to_owned),
                _ => {}
            }
        }
        Some((name?, owner?))
    }

    /// Keeps only the keys named in `live`, and leaves out every person whose
    /// key is gone since the backup was taken (erased since): their account's
    /// events, their email's claims and their place in the access control, so
    /// the clone has no trace of them to sign in with.
    pub fn keep_keys(&mut self, live: &std::collections::HashSet<String>) {
        let scope = Scope::Tenant(self.tenant.clone());
        let prefix = format!("person.{}.", scope.token());
        let erased: std::collections::HashSet<String> = self
            .keys
            .iter()
            .filter(|(name, _)| !live.contains(name))
            .filter_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        self.keys.retain(|(name, _)| live.contains(name));
        let names_erased =
            |e: &Envelope| e.data.get("account_id").and_then(Value::as_str).is_some_and(|id| erased.contains(id));
        self.events.retain(|e| match e.aggregate.as_str() {
            "account" => !erased.contains(&e.aggregate_id),
            "email" | "access" => !names_erased(e),
            _ => true,
        });
    }

    pub fn events(&self) -> usize {
        self.events.len()
    }
}

/// A key name of the backup's tenant as the clone's: `data.{old}` and
/// `person.{old}.{id}` become the new slug's.
fn renamed_key(name: &str, from: &Scope, to: &Scope) -> Option<String> {
    if name == tenant_key_name(from) {
        return Some(tenant_key_name(to));
    }
    let id = name.strip_prefix(&format!("person.{}.", from.token()))?;
    Some(person_key_name(to, id))
}

/// Seals every sealed value in `v` again under its key's new name.
fn reseal(
    v: &mut Value,
    from: &Scope,
    to: &Scope,
    secrets: &std::collections::HashMap<String, DataKey>,
) -> Result<(), StoreError> {
    if let Some(sealed) = Sealed::from_json(v) {
        let Some(new_kid) = renamed_key(&sealed.kid, from, to) else { return Ok(()) };
        let fresh = match secrets.get(&sealed.kid) {
            Some(key) => {
                let plain = key.open(&sealed).map_err(|_| corrupt("a sealed value does not open with its key"))?;
                key.seal(&new_kid, &plain)
            }
            // An erased person's value stays unreadable; only its name moves.
            None => Sealed { kid: new_kid, ..sealed },
        };
        *v = serde_json::to_value(fresh).map_err(|e| corrupt(e.to_string()))?;
        return Ok(());
    }
    match v {
        Value::Object(map) => {
            for value in map.values_mut() {
                reseal(value, from, to, secrets)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                reseal(item, from, to, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Appends the backup's events as tenant `to`'s, after storing its keys under
/// their new names. `to` must have no events yet. Each batch's command id
/// derives from `restore_id`, so a retry of the same restore within the
/// duplicate window stores nothing twice. Returns the last sequence appended.
pub async fn restore(
    store: &EventStore,
    keys: &KeyRing,
    backup: &Backup,
    to: &TenantId,
    restore_id: &str,
) -> Result<u64, StoreError> {
    let from = Scope::Tenant(backup.tenant.clone());
    let target = Scope::Tenant(to.clone());
    let key_error = |e: crate::store::seal::SealError| StoreError::new(StoreErrorKind::Unavailable, e.to_string());
    let mut secrets = std::collections::HashMap::new();
    for (name, wrapped) in &backup.keys {
        let Some(new_name) = renamed_key(name, &from, &target) else { continue };
        let secret = keys
            .unwrap_as(name, wrapped)
            .map_err(|_| corrupt("a key of the backup does not open with this node's master key"))?;
        keys.create(&new_name, &secret).await.map_err(key_error)?;
        let key = DataKey::from_bytes(&secret).ok_or_else(|| corrupt("a key of the wrong length"))?;
        secrets.insert(name.clone(), key);
    }
    let mut last = 0;
    let events: Vec<&Envelope> = backup.events.iter().filter(|e| !LEFT_OUT.contains(&e.event_type.as_str())).collect();
    for (n, chunk) in events.chunks(RESTORE_BATCH).enumerate() {
        let mut batch = Vec::with_capacity(chunk.len());
        for e in chunk {
            let mut envelope = (*e).clone();
            envelope.id = uuid::Uuid::now_v7().to_string();
            envelope.tenant = target.token().to_owned();
            if let Some(actor) = envelope.actor.as_mut()
                && actor.tenant == from.token()
            {
                actor.tenant = target.token().to_owned();
            }
            reseal(&mut envelope.data, &from, &target, &secrets)?;
            if let Some(client) = envelope.client.take() {
                let mut v = serde_json::to_value(client).map_err(|e| corrupt(e.to_string()))?;
                reseal(&mut v, &from, &target, &secrets)?;
                envelope.client = Some(serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?);
            }
            let subject = event_subject(&target, &envelope.aggregate, &envelope.aggregate_id, &envelope.event_type);
            let filter = aggregate_filter(&target, &envelope.aggregate, &envelope.aggregate_id);
            batch.push(Pending { subject, filter, expected_seq: None, envelope });
        }
        let id = crate::domain::ids::derived_uuid(&format!("{restore_id}/{to}/{n}")).replace('-', "");
        let command_id = CommandId::parse(&id).map_err(|e| corrupt(e.to_string()))?;
        last = store.append(&command_id, batch).await?.last_seq.max(last);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_renames_the_tenants_keys_and_reseals_values_under_the_new_names() {
        let (from, to) =
            (Scope::Tenant(TenantId::parse("acme").unwrap()), Scope::Tenant(TenantId::parse("clone").unwrap()));
        assert_eq!(renamed_key("data.acme", &from, &to).as_deref(), Some("data.clone"));
        assert_eq!(renamed_key("person.acme.u1", &from, &to).as_deref(), Some("person.clone.u1"));
        assert_eq!(renamed_key("person.acmecorp.u1", &from, &to), None, "another tenant's key is not ours");
        assert_eq!(renamed_key("data._system", &from, &to), None);

        let person = DataKey::generate();
        let sealed = person.seal("person.acme.u1", b"ada@example.com");
        let erased = DataKey::generate().seal("person.acme.u2", b"gone@example.com");
        let mut data = serde_json::json!({ "email": sealed, "nested": [{ "old": erased }], "plain": "x" });
        let secrets = std::collections::HashMap::from([("person.acme.u1".to_owned(), person.clone())]);
        reseal(&mut data, &from, &to, &secrets).unwrap();
        let moved: Sealed = serde_json::from_value(data["email"].clone()).unwrap();
        assert_eq!(moved.kid, "person.clone.u1");
        assert_eq!(person.open(&moved).unwrap(), b"ada@example.com");
        let still_erased: Sealed = serde_json::from_value(data["nested"][0]["old"].clone()).unwrap();
        assert_eq!(still_erased.kid, "person.clone.u2");
        assert_eq!(data["plain"], "x");
    }

    #[test]
    fn a_backup_of_another_shape_or_tenant_does_not_parse() {
        assert!(Backup::parse(b"").is_err());
        assert!(
            Backup::parse(b"{\"kind\":\"header\",\"format\":\"other/9\",\"tenant\":\"acme\",\"last_seq\":1}\n")
                .is_err()
        );
        let header = b"{\"kind\":\"header\",\"format\":\"canopy-backup/1\",\"tenant\":\"acme\",\"last_seq\":1}\n";
        assert!(Backup::parse(header).is_ok());
        let mut foreign = header.to_vec();
        foreign.extend_from_slice(b"{\"kind\":\"event\",\"envelope\":{\"id\":\"x\",\"type\":\"T\",\"tenant\":\"globex\",\"aggregate\":\"a\",\"aggregate_id\":\"b\",\"occurred_at\":\"t\",\"command_id\":\"c\",\"schema_version\":1,\"data\":{}}}\n");
        assert!(Backup::parse(&foreign).is_err());
    }
}

//! Where state lives: the event log on JetStream (the only code that knows
//! subjects and headers), snapshots, and the sealed keys in KV.

pub mod backup;
pub mod event_store;
pub mod seal;

/// The keys of a KV bucket that match `filter` (a key pattern that may end in
/// `>`), read from the bucket's stream in one request rather than by a watch.
/// Purged keys are listed too: their purge marker is still a message. The
/// error is the server's message, for the caller's own error type.
pub(crate) async fn bucket_keys(kv: &async_nats::jetstream::kv::Store, filter: &str) -> Result<Vec<String>, String> {
    use futures::TryStreamExt;
    let subjects = kv.stream.info_with_subjects(format!("{}{filter}", kv.prefix)).await.map_err(|e| e.to_string())?;
    let subjects: Vec<(String, usize)> = subjects.try_collect().await.map_err(|e| e.to_string())?;
    Ok(subjects.into_iter().filter_map(|(s, _)| s.strip_prefix(kv.prefix.as_str()).map(str::to_owned)).collect())
}

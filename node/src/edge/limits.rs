//! Rate limits on the operations an attacker repeats: sign-in, registration,
//! password resets, email verification and session refresh (OWASP ASVS 5.0,
//! chapter 6). Counters live in the JetStream counter stream `RATELIMITS`
//! (`allow_msg_counter`, nats-server 2.12 and later), so every node of a
//! cluster counts together and every attempt is counted exactly once: an
//! increment is one publish the server adds up atomically, and its ack carries
//! the new total. A limit is a sliding window (the previous window's count,
//! weighted by how much of it still overlaps, plus the current one), which needs
//! two counters per check and no clock beyond the node's.
//!
//! The stream is kept in memory: counting an attempt costs no disk write, and
//! the price is that a restarted nats-server (a whole cluster, with replicas)
//! forgets the counts of the windows in progress. An attacker cannot cause a
//! restart, so this gives a brute-force at most one extra window per restart.
//!
//! A limit counts per client address, or per account *and* address: a flood
//! against one account from one address stops there, and the account's owner
//! signing in from anywhere else is not locked out. Subjects hold only keyed
//! hashes of addresses and emails.

use std::net::IpAddr;
use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

/// The counter stream's name.
pub const STREAM: &str = "RATELIMITS";
/// The subjects of its counters: `ratelimit.{operation}.{a|aa}.{hash}.{window}`.
const PREFIX: &str = "ratelimit";
/// The header that makes a publish to a counter stream an increment.
const INCREMENT: &str = "Nats-Incr";

/// At most `max` attempts per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub max: u32,
    pub window_secs: u64,
}

impl Limit {
    pub const fn new(max: u32, window_secs: u64) -> Self {
        Self { max, window_secs }
    }
}

/// The limits a node applies; the same on every node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub login_per_address: Limit,
    pub login_per_account: Limit,
    pub register_per_address: Limit,
    pub password_reset_per_address: Limit,
    pub password_reset_per_account: Limit,
    pub verification_per_account: Limit,
    pub refresh_per_address: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login_per_address: Limit::new(60, 60),
            login_per_account: Limit::new(10, 900),
            register_per_address: Limit::new(20, 3600),
            password_reset_per_address: Limit::new(20, 3600),
            password_reset_per_account: Limit::new(5, 3600),
            verification_per_account: Limit::new(10, 900),
            refresh_per_address: Limit::new(120, 60),
        }
    }
}

impl RateLimits {
    fn longest_window(&self) -> u64 {
        [
            self.login_per_address,
            self.login_per_account,
            self.register_per_address,
            self.password_reset_per_address,
            self.password_reset_per_account,
            self.verification_per_account,
            self.refresh_per_address,
        ]
        .iter()
        .map(|l| l.window_secs)
        .max()
        .unwrap_or(60)
    }
}

/// What a check counts against: an operation, and who.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// Every attempt from one client address.
    Address(IpAddr),
    /// Attempts on one account (an email, an account id) from one address.
    AccountAddress(&'a str, IpAddr),
}

/// Past a limit: when a retry may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

#[derive(Clone)]
pub struct RateLimiter {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    /// Keys the hashes in subjects, so the stream tells nothing about who tried.
    hash_key: [u8; 32],
}

impl RateLimiter {
    /// Opens (creating it if needed) the counter stream; its counters live two
    /// of the longest windows, long enough for every sliding window to read them.
    pub async fn open(
        js: &jetstream::Context,
        limits: &RateLimits,
        replicas: usize,
        hash_key: [u8; 32],
    ) -> anyhow::Result<Self> {
        let config = jetstream::stream::Config {
            name: STREAM.into(),
            description: Some("rate-limit counters: keyed hashes of addresses and accounts, per window".into()),
            subjects: vec![format!("{PREFIX}.>")],
            allow_message_counter: true,
            allow_direct: true,
            max_age: Duration::from_secs(limits.longest_window() * 2),
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        };
        let stream = match js.get_stream(STREAM).await {
            Ok(s) => s,
            Err(_) => js.create_stream(config).await?,
        };
        Ok(Self { js: js.clone(), stream, hash_key })
    }

    fn subject(&self, operation: &str, key: Key<'_>, window: u64) -> String {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.hash_key).expect("HMAC takes a key of any length");
        match key {
            Key::Address(ip) => mac.update(format!("address\0{ip}").as_bytes()),
            Key::AccountAddress(account, ip) => {
                mac.update(format!("account\0{}\0{ip}", account.to_lowercase()).as_bytes())
            }
        }
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let dimension = match key {
            Key::Address(..) => "a",
            Key::AccountAddress(..) => "aa",
        };
        // The operation names are the node's own constants, safe subject tokens.
        format!("{PREFIX}.{operation}.{dimension}.{hex}.{window}")
    }

    /// Counts one attempt under each of `checks`, unless one of them is past
    /// its limit: then the attempt is taken back from every counter it was
    /// added to, and the answer says when to retry. Of many concurrent
    /// attempts exactly as many pass as the limit leaves room for, because the
    /// server orders the increments.
    ///
    /// A counter that cannot be reached (NATS down) lets the attempt through:
    /// the operations behind it are safe on their own, only slower to
    /// brute-force.
    pub async fn check(&self, checks: &[(&str, Key<'_>, Limit)]) -> Result<(), Limited> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let mut counted = Vec::with_capacity(checks.len());
        let mut refused = None;
        for (operation, key, limit) in checks {
            let window = limit.window_secs.max(1);
            let (current, elapsed) = (now / window, now % window);
            let previous = self.subject(operation, *key, current.saturating_sub(1));
            let subject = self.subject(operation, *key, current);
            // Two independent round trips, in flight together.
            let (previous_count, current_count) = tokio::join!(self.read(&previous), self.add(&subject, 1));
            let Some(current_count) = current_count else { continue };
            counted.push(subject);
            // The share of the previous window that still lies inside the sliding one;
            // `current_count` includes this attempt.
            let weighted = previous_count as f64 * (window - elapsed) as f64 / window as f64;
            if weighted + current_count as f64 > f64::from(limit.max) {
                refused = Some(Limited { retry_after_secs: (window - elapsed).max(1) });
                break;
            }
        }
        let Some(limited) = refused else { return Ok(()) };
        for subject in counted {
            self.add(&subject, -1).await;
        }
        Err(limited)
    }

    /// A counter's value (0 when it has none, or cannot be read).
    async fn read(&self, subject: &str) -> u64 {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => counter_value(&message.payload).unwrap_or(0).max(0) as u64,
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(error = %e, "reading a rate-limit counter");
                0
            }
        }
    }

    /// Adds `delta` to a counter; its new value, or None when it cannot be reached.
    async fn add(&self, subject: &str, delta: i64) -> Option<i64> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(INCREMENT, delta.to_string().as_str());
        let ack = async { self.js.publish_with_headers(subject.to_owned(), headers, bytes::Bytes::new()).await?.await };
        match ack.await {
            Ok(ack) => ack.value.as_deref().and_then(|v| v.parse().ok()),
            Err(e) => {
                tracing::warn!(error = %e, "counting a rate-limited attempt");
                None
            }
        }
    }
}

/// The total a counter message holds: `{"val":"N"}`.
fn counter_value(payload: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Counter {
        val: String,
    }
    serde_json::from_slice::<Counter>(payload).ok()?.val.parse().ok()
}

//! Rate limits on the operations an attacker repeats: sign-in, registration,
//! password resets, email verification and session refresh (OWASP ASVS 5.0,
//! chapter 6). Counters live in the NATS KV bucket `ratelimits`, so every node
//! of a cluster counts together; a limit is a sliding window (the previous
//! window's count, weighted by how much of it still overlaps, plus the current
//! one), which needs two keys per check and no clock beyond the node's.
//!
//! A limit counts per client address, or per account *and* address: a flood
//! against one account from one address stops there, and the account's owner
//! signing in from anywhere else is not locked out. Keys hold only keyed hashes
//! of addresses and emails.

use std::net::IpAddr;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

/// The bucket's name.
pub const BUCKET: &str = "ratelimits";

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
    kv: kv::Store,
    /// Keys the hashes in key names, so the bucket tells nothing about who tried.
    hash_key: [u8; 32],
}

impl RateLimiter {
    /// Opens (creating it if needed) the bucket; its entries live two of the
    /// longest windows, long enough for every sliding window to read them.
    pub async fn open(
        js: &jetstream::Context,
        limits: &RateLimits,
        replicas: usize,
        hash_key: [u8; 32],
    ) -> anyhow::Result<Self> {
        let config = kv::Config {
            bucket: BUCKET.into(),
            description: "rate-limit counters: keyed hashes of addresses and accounts, per window".into(),
            history: 1,
            max_age: Duration::from_secs(limits.longest_window() * 2),
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js.create_key_value(config).await?,
        };
        Ok(Self { kv, hash_key })
    }

    fn name(&self, operation: &str, key: Key<'_>) -> String {
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
        format!("{operation}.{dimension}.{hex}")
    }

    /// Counts one attempt under each of `checks`, unless one of them is past
    /// its limit: then nothing is counted and the answer says when to retry.
    /// A counter that cannot be read (NATS down) lets the attempt through: the
    /// operations behind it are safe on their own, only slower to brute-force.
    pub async fn check(&self, checks: &[(&str, Key<'_>, Limit)]) -> Result<(), Limited> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let mut to_count = Vec::with_capacity(checks.len());
        for (operation, key, limit) in checks {
            let window = limit.window_secs.max(1);
            let (current, elapsed) = (now / window, now % window);
            let base = self.name(operation, *key);
            let (previous_count, _) = self.read(&format!("{base}.{}", current.saturating_sub(1))).await;
            let current_name = format!("{base}.{current}");
            let (current_count, revision) = self.read(&current_name).await;
            // The share of the previous window that still lies inside the sliding one.
            let weighted = previous_count as f64 * (window - elapsed) as f64 / window as f64;
            if weighted + current_count as f64 >= f64::from(limit.max) {
                return Err(Limited { retry_after_secs: (window - elapsed).max(1) });
            }
            to_count.push((current_name, current_count, revision));
        }
        for (name, count, revision) in to_count {
            self.increment(&name, count, revision).await;
        }
        Ok(())
    }

    async fn read(&self, name: &str) -> (u64, u64) {
        match self.kv.entry(name).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let n = std::str::from_utf8(&e.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                (n, e.revision)
            }
            Ok(_) => (0, 0),
            Err(e) => {
                tracing::warn!(error = %e, "reading a rate-limit counter");
                (0, 0)
            }
        }
    }

    /// Adds one to a counter, retrying a few times when another node wrote first.
    async fn increment(&self, name: &str, mut count: u64, mut revision: u64) {
        for _ in 0..5 {
            let value = (count + 1).to_string().into_bytes().into();
            let written = if revision == 0 {
                self.kv.create(name, value).await.is_ok()
            } else {
                self.kv.update(name, value, revision).await.is_ok()
            };
            if written {
                return;
            }
            (count, revision) = self.read(name).await;
        }
        tracing::warn!("a rate-limit counter stayed contended; one attempt was not counted");
    }
}

//! Password hashing off the async runtime, with a bound on how many run at once,
//! so a login flood on one tenant cannot starve the runtime for every other one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::account::Password;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password hasher is shutting down")]
    Closed,
    #[error("password hashing failed")]
    Failed,
}

/// Argon2id with OWASP's recommended minimum: 19 MiB of memory, 2 iterations, 1 lane.
pub fn owasp_params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("OWASP's argon2id parameters are valid")
}

#[derive(Clone, Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Hashes running on the blocking pool right now.
    running: Arc<AtomicUsize>,
    params: Params,
    /// Verified against when an email is unknown, so that the answer takes as long
    /// as a wrong password would.
    dummy: Arc<String>,
}

impl Hasher {
    /// `concurrency` is the number of hashes that may run at once (for example the
    /// number of cores); others wait their turn.
    pub fn new(concurrency: usize, params: Params) -> Self {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let dummy =
            argon.hash_password(b"canopy-dummy-password", &salt).expect("hashing a constant cannot fail").to_string();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            running: Arc::default(),
            params,
            dummy: Arc::new(dummy),
        }
    }

    fn argon(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// How many hashes or verifications are running on the blocking pool now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Runs `work` on the blocking pool once a permit is free: argon2 never runs on
    /// the async runtime, and never more than `concurrency` at once.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Closed)?;
        let running = self.running.clone();
        tokio::task::spawn_blocking(move || {
            running.fetch_add(1, Ordering::SeqCst);
            let out = work();
            running.fetch_sub(1, Ordering::SeqCst);
            out
        })
        .await
        .map_err(|_| HashError::Failed)?
    }

    /// Hashes a password into a PHC string (algorithm, parameters, salt and hash).
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let pw = password.expose().to_owned();
        let params = self.params.clone();
        self.off_runtime(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Self::argon(params)
                .hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| HashError::Failed)
        })
        .await
    }

    /// Checks a password against a PHC string. `None` verifies against a dummy hash
    /// and returns false, taking the same time as a real check.
    pub async fn verify(&self, password: &Password, phc: Option<String>) -> Result<bool, HashError> {
        let pw = password.expose().to_owned();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_str().to_owned());
        self.off_runtime(move || {
            let parsed = PasswordHash::new(&phc).map_err(|_| HashError::Failed)?;
            // The parameters come from the PHC string, so old hashes still verify
            // after the parameters are raised.
            let ok = Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok();
            Ok(ok && known)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let h = Hasher::new(2, Params::new(1024, 1, 1, None).unwrap());
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(h.verify(&pw, Some(phc.clone())).await.unwrap());
        assert!(!h.verify(&Password::parse("wrong horse").unwrap(), Some(phc)).await.unwrap());
        assert!(!h.verify(&pw, None).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_hashes_run_at_once_than_the_bound() {
        for bound in [1usize, 2] {
            let h = Hasher::new(bound, owasp_params());
            let pw = Password::parse("correct horse").unwrap();
            let mut hashes = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let (h, pw) = (h.clone(), pw.clone());
                hashes.spawn(async move { h.hash(&pw).await.map(|_| ()) });
            }
            let mut peak = 0;
            while !hashes.is_empty() {
                peak = peak.max(h.running());
                if let Some(done) = hashes.try_join_next() {
                    done.unwrap().unwrap();
                }
                tokio::task::yield_now().await;
            }
            assert!(peak >= 1, "the sampler never saw a hash running");
            assert!(peak <= bound, "{peak} hashes ran at once with a bound of {bound}");
        }
    }

    #[test]
    fn owasp_parameters_are_used_by_default() {
        let p = owasp_params();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19 * 1024, 2, 1));
    }
}

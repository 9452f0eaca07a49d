//! Password hashing off the async runtime, with a bound on how many run at once,
//! so a login flood on one tenant cannot starve the runtime for every other one.

use std::sync::Arc;

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
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), params, dummy: Arc::new(dummy) }
    }

    fn argon(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// Hashes a password into a PHC string (algorithm, parameters, salt and hash).
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Closed)?;
        let pw = password.expose().to_owned();
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Self::argon(params)
                .hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| HashError::Failed)
        })
        .await
        .map_err(|_| HashError::Failed)?
    }

    /// Checks a password against a PHC string. `None` verifies against a dummy hash
    /// and returns false, taking the same time as a real check.
    pub async fn verify(&self, password: &Password, phc: Option<String>) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Closed)?;
        let pw = password.expose().to_owned();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.as_str().to_owned());
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&phc).map_err(|_| HashError::Failed)?;
            // The parameters come from the PHC string, so old hashes still verify
            // after the parameters are raised.
            let ok = Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok();
            Ok(ok && known)
        })
        .await
        .map_err(|_| HashError::Failed)?
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

    #[test]
    fn owasp_parameters_are_used_by_default() {
        let p = owasp_params();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19 * 1024, 2, 1));
    }
}

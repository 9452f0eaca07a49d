//! Password hashing off the async runtime, on threads of its own at low priority,
//! with a bound on how many run at once, so a login flood on one tenant cannot
//! starve the runtime, or the CPU, for every other one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::account::Password;

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

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone, Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// The hashing threads' queue; they exit when the last clone is dropped.
    jobs: std::sync::mpsc::Sender<Job>,
    /// Hashes running on the hashing threads right now.
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
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..concurrency.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("canopy-hash-{n}")).spawn(move || {
                yield_to_other_work();
                loop {
                    // The lock is held only while waiting for the next job.
                    let job = queue.lock().map(|q| q.recv());
                    match job {
                        // A panicking job drops its reply (the caller gets `Failed`);
                        // the thread lives on, so the pool never shrinks.
                        Ok(Ok(job)) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        _ => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs,
            running: Arc::default(),
            params,
            dummy: Arc::new(dummy),
        }
    }

    fn argon(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// How many hashes or verifications are running on the hashing threads now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Runs `work` on a hashing thread once a permit is free: argon2 never runs on
    /// the async runtime, and never more than `concurrency` at once.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Closed)?;
        let running = self.running.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _running = Running::enter(running);
            let _ = tx.send(work());
        });
        self.jobs.send(job).map_err(|_| HashError::Closed)?;
        // A job dropped unrun (its thread panicked or is gone) ends as a failure.
        rx.await.map_err(|_| HashError::Failed)?
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

/// Counts a job as running until it ends, even if it panics.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lowers the calling thread's CPU priority (nice 10). A hash is 19 MiB and two
/// passes of pure CPU; at normal priority a login flood on one tenant took the
/// cores from every other tenant's queries (BENCHMARKS.md, I). At nice 10 the
/// hashes use whatever CPU the rest of the node leaves, and logins queue instead.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn yield_to_other_work() {
    // SAFETY: setpriority(2) on our own thread id (Linux applies PRIO_PROCESS with
    // a tid to that thread only); no memory is touched.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if rc != 0 {
        tracing::debug!("could not lower a hashing thread's priority; it keeps the default");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_other_work() {}

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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_of_their_own_at_low_priority() {
        let h = Hasher::new(1, Params::new(1024, 1, 1, None).unwrap());
        h.hash(&Password::parse("correct horse").unwrap()).await.unwrap();
        // (comm, nice) of every thread of this process, from /proc/self/task/*/stat.
        let threads = || -> Vec<(String, i64)> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter_map(|stat| {
                    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
                    let nice = stat[stat.rfind(')')? + 2..].split(' ').nth(16)?.parse().ok()?;
                    Some((comm, nice))
                })
                .filter(|(comm, _)| comm.starts_with("canopy-hash"))
                .collect()
        };
        // Other tests in this process start hashers too: a thread read in the
        // moment between its start and its first line (which lowers its
        // priority) shows the default; it must not stay there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut hashing = threads();
        while hashing.iter().any(|(_, nice)| *nice != 10) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            hashing = threads();
        }
        assert!(!hashing.is_empty(), "no hashing thread");
        assert!(hashing.iter().all(|(_, nice)| *nice == 10), "{hashing:?}");
    }

    #[test]
    fn owasp_parameters_are_used_by_default() {
        let p = owasp_params();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19 * 1024, 2, 1));
    }
}

//! The benchmark: Canopy next to raw JetStream, measured in one run on one machine.
//! It starts its own nats-server (the repository's `nats.conf`, so
//! `sync_interval: always`), runs a real node in-process, and reports throughput
//! and latency per scenario, each as a ratio to the raw-JetStream baseline.
//! `canopy-bench` runs it; `--quick` runs every scenario briefly (the test suite
//! does, to check that each one runs and returns sane numbers).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::command::{AccountReply, AccountRequest, CommandEnvelope, CommandResult, Principal, command_subject};
use actors::domain::account::{AccountId, PersonName};
use actors::domain::ids::CommandId;
use actors::domain::tenant::{Scope, TenantId};
use actors::store::event_store::stream_config;
use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Config;

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Where to write the JSON report.
    pub out: Option<PathBuf>,
    /// Run only these scenarios (letters, e.g. `AC`); all when unset.
    pub only: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub scenario: String,
    pub concurrency: usize,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Throughput as a share of the baseline at the same concurrency.
    pub throughput_vs_baseline: Option<f64>,
    /// p99 as a multiple of the baseline's p99 at the same concurrency.
    pub p99_vs_baseline: Option<f64>,
    /// Scenario-specific figures (memory, lag, comparison with an unloaded run).
    pub extra: std::collections::BTreeMap<String, f64>,
    /// When each measured stretch ran, so that a profile recorded around the
    /// bench can be split by scenario and side (`scripts/perf-slices.py`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
}

/// One stretch of a measurement, on `CLOCK_MONOTONIC` in seconds: the clock
/// `perf` stamps its samples with.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// `measured`, or `baseline` for the paired side (`unloaded` in I).
    pub side: &'static str,
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Value,
    pub quick: bool,
    pub results: Vec<Stats>,
    /// Scenarios asked for that could not run here, with the reason (M
    /// without aiosmtpd).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub skipped: std::collections::BTreeMap<String, String>,
}

/// Latencies (µs) of one or more measured stretches, their total length, and
/// when each stretch ran (monotonic seconds).
#[derive(Default)]
struct Samples {
    lat: Vec<u64>,
    secs: f64,
    windows: Vec<(f64, f64)>,
    /// CPU time this process (the node, its projector and the bench's clients;
    /// not nats-server) used while the stretches ran.
    cpu_secs: f64,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.lat.extend(other.lat);
        self.secs += other.secs;
        self.windows.extend(other.windows);
        self.cpu_secs += other.cpu_secs;
    }

    fn stats(self, scenario: &str, concurrency: usize) -> Stats {
        let ops = self.lat.len().max(1) as f64;
        let cpu_us_per_op = self.cpu_secs * 1e6 / ops;
        let mut stats = from_samples(scenario, self.lat, self.secs);
        stats.concurrency = concurrency;
        stats.windows = self.windows.iter().map(|&(start, end)| Window { side: "measured", start, end }).collect();
        stats.extra.insert("cpu_us_per_op".into(), cpu_us_per_op);
        stats
    }
}

/// Seconds on one of the kernel's clocks.
#[allow(unsafe_code)]
fn clock_secs(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec, and the callers pass clocks
    // that always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds this process has used, on `CLOCK_PROCESS_CPUTIME_ID`: a figure
/// that two shared cores blur less than a rate, and that leaves nats-server out.
fn process_cpu() -> f64 {
    clock_secs(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Seconds on `CLOCK_MONOTONIC`. `Instant` reads the same clock but does not
/// expose it, and the windows must line up with `perf`'s timestamps.
fn monotonic() -> f64 {
    clock_secs(libc::CLOCK_MONOTONIC)
}

/// Runs `op` from `concurrency` workers for `duration`; `op(worker, i)`, with each
/// worker's `i` counting up from `first`.
async fn sample<F, Fut>(concurrency: usize, duration: Duration, first: u64, op: &Arc<F>) -> anyhow::Result<Samples>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let (start, since, cpu) = (Instant::now(), monotonic(), process_cpu());
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let op = op.clone();
        workers.spawn(async move {
            let mut lat = Vec::new();
            let mut i = first;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(w, i).await?;
                lat.push(t.elapsed().as_micros() as u64);
                i += 1;
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = workers.join_next().await {
        all.extend(r??);
    }
    let cpu_secs = process_cpu() - cpu;
    Ok(Samples { lat: all, secs: start.elapsed().as_secs_f64(), windows: vec![(since, monotonic())], cpu_secs })
}

/// Runs `op` from `concurrency` workers for `duration`; `op(worker, i)`.
async fn measure<F, Fut>(scenario: &str, concurrency: usize, duration: Duration, op: F) -> anyhow::Result<Stats>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    Ok(sample(concurrency, duration, 0, &Arc::new(op)).await?.stats(scenario, concurrency))
}

/// How many slices a paired measurement alternates between its two sides.
const SLICES: u32 = 4;

/// Waits, between the slices of a paired measurement, until the node's projector
/// has applied everything in `EVENTS`: otherwise the backlog a slice of commands
/// leaves behind is projected during the next slice, which is the baseline's half
/// the time, and the ratio would flatter the commands.
struct Drain {
    js: async_nats::jetstream::Context,
    client: reqwest::Client,
    metrics: String,
}

impl Drain {
    async fn wait(&self) -> anyhow::Result<()> {
        // `get_stream` fetches the stream's info; its cached copy is current.
        let head = self.js.get_stream(actors::store::event_store::STREAM).await?.cached_info().state.last_sequence;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = self.client.get(&self.metrics).send().await?.text().await?;
            if gauge(&metrics, "canopy_projection_applied_seq") as u64 >= head {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the projector did not reach sequence {head} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs the two sides of a paired measurement in alternating slices (base, op, op,
/// base, base, op, ...), `duration` in all for each, so that both see the same
/// disk. On this kind of machine fsync latency drifts by a third within minutes,
/// more than the differences being measured, so a baseline taken a minute earlier
/// would decide the ratio. `run(true, k)` runs slice `k` of the measured side,
/// `run(false, k)` of the baseline. Each slice starts with the projector idle.
async fn paired<R, Fut>(duration: Duration, drain: &Drain, mut run: R) -> anyhow::Result<(Samples, Samples)>
where
    R: FnMut(bool, Duration, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<Samples>>,
{
    let slice = duration / SLICES;
    let (mut base, mut op) = (Samples::default(), Samples::default());
    for k in 0..u64::from(SLICES) {
        let order = if k % 2 == 0 { [false, true] } else { [true, false] };
        for measured in order {
            // Offsets keep `i` unique across slices (the baseline's subjects use it).
            let s = run(measured, slice, k * 1_000_000_000).await?;
            drain.wait().await?;
            if measured { op.add(s) } else { base.add(s) }
        }
    }
    Ok((base, op))
}

/// Measures `op` against the raw-JetStream baseline `base` in alternating slices
/// (see `paired`), and reports op's throughput and p99 as ratios to that baseline.
async fn measure_against<B, BFut, F, Fut>(
    scenario: &str,
    concurrency: usize,
    duration: Duration,
    drain: &Drain,
    base: &Arc<B>,
    op: F,
) -> anyhow::Result<Stats>
where
    B: Fn(usize, u64) -> BFut + Send + Sync + 'static,
    BFut: Future<Output = anyhow::Result<()>> + Send,
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let (base, op) = paired(duration, drain, |measured, slice, first| {
        let (base, op) = (base.clone(), op.clone());
        async move {
            if measured {
                sample(concurrency, slice, first, &op).await
            } else {
                sample(concurrency, slice, first, &base).await
            }
        }
    })
    .await?;
    let base = base.stats("paired baseline", concurrency);
    let mut st = op.stats(scenario, concurrency);
    st.windows.extend(base.windows.iter().map(|w| Window { side: "baseline", ..w.clone() }));
    st.throughput_vs_baseline = Some(st.ops_per_sec / base.ops_per_sec.max(f64::MIN_POSITIVE));
    st.p99_vs_baseline = Some(st.p99_us as f64 / base.p99_us.max(1) as f64);
    st.extra.insert("paired_A_ops_per_sec".into(), base.ops_per_sec);
    st.extra.insert("paired_A_p99_us".into(), base.p99_us as f64);
    // The clients' own share of `cpu_us_per_op`: what the same process spends per
    // raw publish. The difference is, near enough, the node's CPU per command.
    let base_cpu = base.extra.get("cpu_us_per_op").copied().unwrap_or(0.0);
    st.extra.insert("paired_A_cpu_us_per_op".into(), base_cpu);
    let own = st.extra.get("cpu_us_per_op").copied().unwrap_or(0.0) - base_cpu;
    st.extra.insert("node_cpu_us_per_op".into(), own.max(0.0));
    Ok(st)
}

/// Stats from latency samples gathered outside `measure`.
fn from_samples(scenario: &str, mut lat: Vec<u64>, secs: f64) -> Stats {
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    Stats {
        scenario: scenario.to_owned(),
        concurrency: 1,
        ops: lat.len() as u64,
        ops_per_sec: lat.len() as f64 / secs.max(f64::MIN_POSITIVE),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        throughput_vs_baseline: None,
        p99_vs_baseline: None,
        extra: Default::default(),
        windows: Vec::new(),
    }
}

/// A value from the node's Prometheus text, 0 when absent.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An envelope the size of a real AccountRegistered (sealed fields included).
fn event_payload() -> Vec<u8> {
    let sealed = json!({ "kid": "person.acme.0196f0c2-8a6e-7c1b-9d4e-3f2a1b0c9d8e", "n": "AAAAAAAAAAAAAAAA", "c": "B".repeat(48) });
    serde_json::to_vec(&json!({
        "id": uuid::Uuid::now_v7().to_string(), "type": "AccountRegistered", "tenant": "acme", "aggregate": "account",
        "aggregate_id": uuid::Uuid::now_v7().to_string(), "occurred_at": "2026-11-22T00:00:00Z", "command_id": "c",
        "schema_version": 1,
        "data": { "account_id": "x", "email_index": "0".repeat(32), "email": sealed, "password_hash": sealed,
                  "firstname": sealed, "lastname": sealed, "owner": false },
    }))
    .expect("json")
}

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    url: String,
}

impl Http {
    async fn gql(&self, tenant: Option<&str>, token: Option<&str>, query: &str, vars: Value) -> anyhow::Result<Value> {
        self.gql_from(None, tenant, token, query, vars).await
    }

    /// `gql` from the client address `from`, sent as `X-Forwarded-For` (the
    /// bench's node trusts it), as if through a proxy in front of the node.
    async fn gql_from(
        &self,
        from: Option<std::net::IpAddr>,
        tenant: Option<&str>,
        token: Option<&str>,
        query: &str,
        vars: Value,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(json!({ "query": query, "variables": vars }).to_string());
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ip) = from {
            req = req.header("x-forwarded-for", ip.to_string());
        }
        let v: Value = serde_json::from_str(&req.send().await?.text().await?)?;
        if let Some(e) = v.get("errors") {
            bail!("graphql error: {e}");
        }
        Ok(v)
    }
}

const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { token } }";

fn token(v: &Value, field: &str) -> anyhow::Result<String> {
    v["data"][field]["token"].as_str().map(str::to_owned).context("no token")
}

/// A tenant's slug and an account in it, with its token.
#[derive(Clone)]
struct Actor {
    tenant: String,
    account_id: String,
    token: String,
}

fn machine() -> Value {
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse::<u64>().ok()));
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let root = std::env::temp_dir().join(format!("canopy-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&root)?;
    let result = run_in(&root, &opts).await;
    let _ = std::fs::remove_dir_all(&root);
    let report = result?;
    if let Some(out) = &opts.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(report)
}

async fn run_in(root: &std::path::Path, opts: &Options) -> anyhow::Result<Report> {
    let nats = crate::nats::local::LocalNats::start()?;
    let (duration, tenants, busy_accounts) =
        if opts.quick { (Duration::from_millis(300), 2, 4) } else { (Duration::from_secs(8), 100, 64) };
    // The bench shares the node's master key, so its own actors (F, G) can open the
    // keys the node created.
    let master = actors::store::seal::MasterKey::generate();
    // M needs a real SMTP server before the node starts (its relay is fixed at
    // startup); without one the node writes mail to its outbox, as it does in
    // the other scenarios' fixtures anyway.
    let mut skipped = std::collections::BTreeMap::new();
    let sink = if opts.only.as_ref().is_none_or(|o| o.to_uppercase().contains('M')) {
        match SmtpSink::start(&root.join("smtp-sink")).await {
            Ok(sink) => Some(sink),
            Err(why) => {
                tracing::warn!("scenario M skipped: {why:#}");
                skipped.insert("M".to_owned(), format!("{why:#}"));
                None
            }
        }
    } else {
        None
    };
    // Every client of the bench comes from 127.0.0.1, or from the address R
    // puts in `X-Forwarded-For`: with the default limits the fixtures' 64
    // registrations, R's sign-ins and I's flood of logins would be refused
    // after the first few. Every attempt still reads and writes the limits'
    // counters, as in production; only their maximum is out of reach.
    let unlimited = crate::edge::limits::Limit::new(u32::MAX, 60);
    let rate_limits = crate::edge::limits::RateLimits {
        login_per_address: unlimited,
        login_per_account: unlimited,
        register_per_address: unlimited,
        password_reset_per_address: unlimited,
        password_reset_per_account: unlimited,
        verification_per_account: unlimited,
        refresh_per_address: unlimited,
    };

    let config = Config {
        nats_url: Some(nats.url.clone()),
        nats_creds: match nats.credentials() {
            crate::nats::credentials::Credentials::CredsFile(path) => Some(path),
            _ => None,
        },
        surreal_url: Some("mem://".into()),
        data_dir: root.join("node"),
        bootstrap_admin_email: Some("bench@canopy.test".into()),
        bootstrap_admin_password: Some("bench-admin-password".to_owned().into()),
        master_key: Some(master.to_base64().into()),
        rate_limits,
        // R's clients each send their own address, as a proxy would.
        trust_forwarded_for: true,
        smtp_url: sink.as_ref().map(SmtpSink::url),
        // P: the node answers the auth callout and publishes pushes.
        nats_auth_dir: nats.auth_dir(),
        // W: the receivers are on this host.
        webhook_allow_loopback: true,
        ..Config::default()
    };
    let node_config = config.clone();
    let client = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
    let (addr, stop_tx, node) = start_node(config, &client).await?;
    let http = Http { client, url: format!("http://{addr}/graphql") };
    let nc = nats.client().await?;

    let mut results = Vec::new();
    let fixture = Fixture {
        quick: opts.quick,
        duration,
        tenants,
        busy_accounts,
        levels: [1, 64],
        master,
        metrics: format!("http://{addr}/metrics"),
        only: opts.only.as_ref().map(|o| o.to_uppercase()),
        sink,
        nats_url: nats.url.clone(),
        node_config,
        root: root.to_path_buf(),
    };
    let result = scenarios(&http, &nc, &fixture, &mut results).await;
    let _ = stop_tx.send(());
    let _ = node.await;
    result?;

    // Ratios against the baseline at the same concurrency.
    let baseline: Vec<Stats> = results.iter().filter(|s| s.scenario.starts_with('A')).cloned().collect();
    // B, C and E carry ratios to their paired baseline already; D gets them here.
    for s in results.iter_mut().filter(|s| s.scenario.starts_with('D')) {
        if let Some(b) = baseline.iter().find(|b| b.concurrency == s.concurrency) {
            s.throughput_vs_baseline = Some(s.ops_per_sec / b.ops_per_sec.max(f64::MIN_POSITIVE));
            s.p99_vs_baseline = Some(s.p99_us as f64 / b.p99_us.max(1) as f64);
        }
    }
    Ok(Report { machine: machine(), quick: opts.quick, results, skipped })
}

/// Starts a node in this process and waits until it is ready: its address,
/// the sender that stops it and its task.
async fn start_node(
    config: Config,
    client: &reqwest::Client,
) -> anyhow::Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(crate::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return Ok((addr, stop_tx, node));
        }
        if Instant::now() > deadline || node.is_finished() {
            bail!("the node did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one run measures and with what: sizes, the shared master key, the node's
/// metrics URL and the scenario filter.
struct Fixture {
    quick: bool,
    duration: Duration,
    tenants: usize,
    busy_accounts: usize,
    levels: [usize; 2],
    master: actors::store::seal::MasterKey,
    metrics: String,
    only: Option<String>,
    /// The SMTP server the node relays to, when M runs.
    sink: Option<SmtpSink>,
    /// Where push clients connect (P).
    nats_url: String,
    /// The node's configuration, for the nodes N adds, and where their data goes.
    node_config: Config,
    root: PathBuf,
}

impl Fixture {
    fn wants(&self, scenario: char) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(scenario))
    }
}

async fn scenarios(
    http: &Http,
    nc: &async_nats::Client,
    fixture: &Fixture,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()> {
    let Fixture { duration, tenants, busy_accounts, levels, .. } = *fixture;
    // A: raw JetStream publish with ack, on a stream configured like EVENTS.
    let js = async_nats::jetstream::new(nc.clone());
    let drain = Drain { js: js.clone(), client: http.client.clone(), metrics: fixture.metrics.clone() };
    let mut cfg = stream_config(1);
    cfg.name = "BENCH".into();
    cfg.subjects = vec!["bench.>".into()];
    js.create_stream(cfg).await?;
    let payload = bytes::Bytes::from(event_payload());
    let (checked_js, checked_payload) = (js.clone(), payload.clone());
    let publish = Arc::new(move |w: usize, i: u64| {
        let (js, payload) = (js.clone(), payload.clone());
        async move {
            js.publish(format!("bench.t{w}.account.{i}.AccountRegistered"), payload).await?.await?;
            anyhow::Ok(())
        }
    });
    for &c in levels.iter().filter(|_| fixture.wants('A')) {
        let s = sample(c, duration, 0, &publish).await?;
        results.push(s.stats("A raw JetStream publish+ack", c));
    }
    // A': A with the headers `EventStore::append` puts on a one-event batch (a
    // message id for dedupe, the expected last sequence of the aggregate's
    // subjects), here on a stream of the bench's own, on 100 aggregates
    // written over and over as in B, measured against A: the cost of the
    // optimistic concurrency check that DESIGN.md requires, inside nats-server.
    let last: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new((0..100).map(|_| Default::default()).collect());
    for &c in levels.iter().filter(|_| fixture.wants('A')) {
        let (js, payload, last) = (checked_js.clone(), checked_payload.clone(), last.clone());
        let checked = move |w: usize, i: u64| {
            let (js, payload, last) = (js.clone(), payload.clone(), last.clone());
            async move {
                use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
                use std::sync::atomic::Ordering;
                // Each worker owns its aggregates, so no check ever fails.
                let a = pick(last.len(), c, w, i);
                let mut h = async_nats::HeaderMap::new();
                h.insert(NATS_MESSAGE_ID, uuid::Uuid::now_v7().simple().to_string().as_str());
                h.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, last[a].load(Ordering::Acquire).to_string().as_str());
                h.insert(
                    actors::store::event_store::EXPECTED_SUBJECT_HEADER,
                    format!("bench.t{a}.account.a{a}.*").as_str(),
                );
                let subject = format!("bench.t{a}.account.a{a}.ProfileUpdated");
                let ack = js.publish_with_headers(subject, h, payload).await?.await?;
                last[a].store(ack.sequence, Ordering::Release);
                anyhow::Ok(())
            }
        };
        results.push(
            measure_against("A' publish+ack with Canopy's checks", c, duration, &drain, &publish, checked).await?,
        );
    }

    // Fixtures: tenants with their owners, and one busy tenant with many accounts.
    let admin = token(
        &http
            .gql(
                None,
                None,
                LOGIN,
                json!({ "i": { "email": "bench@canopy.test", "password": "bench-admin-password" } }),
            )
            .await?,
        "login",
    )?;
    let mut owners = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let slug = format!("bench-{t}");
        http.gql(
            None,
            Some(&admin),
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
            json!({ "i": { "slug": slug, "name": slug, "ownerEmail": format!("owner@{slug}.test"), "ownerPassword": "owner-password" } }),
        )
        .await?;
        let tok = token(
            &http
                .gql(
                    Some(&slug),
                    None,
                    LOGIN,
                    json!({ "i": { "email": format!("owner@{slug}.test"), "password": "owner-password" } }),
                )
                .await?,
            "login",
        )?;
        let me = http.gql(Some(&slug), Some(&tok), "{ me { id } }", json!({})).await?;
        let account_id = me["data"]["me"]["id"].as_str().context("no id")?.to_owned();
        owners.push(Actor { tenant: slug, account_id, token: tok });
    }
    let mut busy = Vec::with_capacity(busy_accounts);
    for a in 0..busy_accounts {
        let r = http
            .gql(
                Some("bench-0"),
                None,
                "mutation($i: RegisterInput!) { register(input: $i) { token user { id } } }",
                json!({ "i": { "email": format!("user{a}@bench-0.test"), "password": "user-password", "firstname": "U", "lastname": "B" } }),
            )
            .await?;
        busy.push(Actor {
            tenant: "bench-0".into(),
            account_id: r["data"]["register"]["user"]["id"].as_str().context("no id")?.to_owned(),
            token: token(&r, "register")?,
        });
    }
    // For D: per tenant, an access token of the owner's with `read_users`, and
    // a member whose only role is a custom one granting `read_users`.
    let (mut tokens, mut readers) = (Vec::new(), Vec::new());
    if fixture.wants('D') {
        for o in &owners {
            let secret = http
                .gql(
                    Some(&o.tenant),
                    Some(&o.token),
                    "mutation { createAccessToken(input: {name: \"bench\", scopes: [\"read_users\"]}) { secret } }",
                    json!({}),
                )
                .await?["data"]["createAccessToken"]["secret"]
                .as_str()
                .context("no secret")?
                .to_owned();
            tokens.push(Actor { token: secret, ..o.clone() });
            let role = http
                .gql(
                    Some(&o.tenant),
                    Some(&o.token),
                    "mutation { createRole(input: {name: \"Reader\", permissions: [\"read_users\"]}) { id } }",
                    json!({}),
                )
                .await?["data"]["createRole"]["id"]
                .as_str()
                .context("no role id")?
                .to_owned();
            let r = http
                .gql(
                    Some(&o.tenant),
                    None,
                    "mutation($i: RegisterInput!) { register(input: $i) { token user { id } } }",
                    json!({ "i": { "email": format!("reader@{}.test", o.tenant), "password": "reader-password", "firstname": "R", "lastname": "B" } }),
                )
                .await?;
            let reader_id = r["data"]["register"]["user"]["id"].as_str().context("no id")?.to_owned();
            http.gql(
                Some(&o.tenant),
                Some(&o.token),
                "mutation($u: ID!, $r: [ID!]!) { changeMemberRole(input: {userId: $u, roles: $r}) }",
                json!({ "u": reader_id, "r": [role] }),
            )
            .await?;
            readers.push(Actor { tenant: o.tenant.clone(), account_id: reader_id, token: token(&r, "register")? });
        }
    }
    let owners = Arc::new(owners);
    let busy = Arc::new(busy);
    let (tokens, readers) = (Arc::new(tokens), Arc::new(readers));

    // B and E: a profile update sent as a NATS request straight to the tenant trees.
    for &c in levels.iter().filter(|_| fixture.wants('B')) {
        let (nc, owners) = (nc.clone(), owners.clone());
        results.push(
            measure_against("B commands to actors (NATS)", c, duration, &drain, &publish, move |w, i| {
                let who = owners[pick(owners.len(), c, w, i)].clone();
                update_profile(nc.clone(), who, i)
            })
            .await?,
        );
    }

    // R: refreshSession through GraphQL, beside B's profile update: each worker
    // rotates its own session's refresh token, always presenting the newest.
    if fixture.wants('R') {
        refresh(http, fixture, &owners, &drain, &publish, results).await?;
    }

    // C: the same command as a GraphQL mutation, answered after read-your-writes.
    // The projector's batch counters are read before each level, so that H's
    // events per batch are those of the last (highest) level alone: averaged over
    // both levels, the one-event batches at concurrency 1 made them look like 4.
    let mut before_c = (0.0, 0.0);
    for &c in levels.iter().filter(|_| fixture.wants('C')) {
        let metrics = http.client.get(&fixture.metrics).send().await?.text().await?;
        before_c =
            (gauge(&metrics, "canopy_projection_batches_total"), gauge(&metrics, "canopy_projection_events_total"));
        let (owners, http) = (owners.clone(), http.clone());
        results.push(
            measure_against("C mutations through GraphQL", c, duration, &drain, &publish, move |w, i| {
                let who = owners[pick(owners.len(), c, w, i)].clone();
                let h = http.clone();
                async move {
                    h.gql(
                        Some(&who.tenant),
                        Some(&who.token),
                        "mutation($f: String!) { updateProfile(input: {firstname: $f, lastname: \"Bench\"}) { id } }",
                        json!({ "f": format!("N{i}") }),
                    )
                    .await?;
                    Ok(())
                }
            })
            .await?,
        );
    }

    // H: projection lag while C ran (the node's lag windows cover the last 5 s):
    // from the append's ack to the read model, as the target is stated, and from
    // the stream's own timestamp, which also counts nats-server's time between
    // storing an event and delivering its ack.
    if fixture.wants('H') {
        let metrics = http.client.get(&fixture.metrics).send().await?.text().await?;
        let gauge = |name: &str| gauge(&metrics, name);
        let mut h = from_samples("H projection lag (ack to read model), C", Vec::new(), 1.0);
        h.concurrency = *levels.last().expect("levels");
        h.ops = gauge("canopy_projection_ack_lag_seconds_count") as u64;
        h.ops_per_sec = 0.0;
        h.p50_us = (gauge("canopy_projection_ack_lag_seconds{quantile=\"0.5\"}") * 1e6) as u64;
        h.p99_us = (gauge("canopy_projection_ack_lag_seconds{quantile=\"0.99\"}") * 1e6) as u64;
        h.extra.insert("stored_p50_us".into(), gauge("canopy_projection_lag_seconds{quantile=\"0.5\"}") * 1e6);
        h.extra.insert("stored_p99_us".into(), gauge("canopy_projection_lag_seconds{quantile=\"0.99\"}") * 1e6);
        let (batches, events) = (
            gauge("canopy_projection_batches_total") - before_c.0,
            gauge("canopy_projection_events_total") - before_c.1,
        );
        h.extra.insert("events_per_batch".into(), events / batches.max(1.0));
        results.push(h);
    }

    // D: queries, `me` and a page of `users`; the page also as an access token
    // and as a member holding a custom role, for what the permission check costs.
    let page = "{ users(first: 20) { edges { node { email } } } }";
    for (name, query, callers) in [
        ("D query me", "{ me { id email } }", &owners),
        ("D query users page", page, &owners),
        ("D query users page, access token", page, &tokens),
        ("D query users page, custom role", page, &readers),
    ] {
        for &c in levels.iter().filter(|_| fixture.wants('D')) {
            let (owners, http) = (callers.clone(), http.clone());
            results.push(
                measure(name, c, duration, move |w, i| {
                    let who = owners[pick(owners.len(), c, w, i)].clone();
                    let h = http.clone();
                    async move {
                        h.gql(Some(&who.tenant), Some(&who.token), query, json!({})).await?;
                        Ok(())
                    }
                })
                .await?,
            );
        }
    }

    // J: a module's records (each owner's tenant holds contacts@v1).
    if fixture.wants('J') {
        modules(http, fixture, &owners, &drain, &publish, results).await?;
    }

    // P: push fan-out to one tenant's clients.
    if fixture.wants('P') {
        push_fanout(http, fixture, &owners[0], results).await?;
    }

    // W: webhook deliveries, and one tenant's slow endpoint beside another's.
    if fixture.wants('W') {
        webhooks(http, nc, fixture, &owners, results).await?;
    }

    // E: one busy tenant, each worker on its own account.
    let c = *levels.last().expect("levels");
    let nc2 = nc.clone();
    if fixture.wants('E') {
        results.push(
            measure_against("E one busy tenant (NATS)", c, duration, &drain, &publish, move |w, i| {
                let who = busy[pick(busy.len(), c, w, i)].clone();
                update_profile(nc2.clone(), who, i)
            })
            .await?,
        );
    }

    // I: the quiet tenant's `me` while another tenant takes a flood of logins,
    // against the same query unloaded, in alternating slices.
    if fixture.wants('I') {
        let quiet = owners[0].clone();
        let noisy = owners[owners.len() - 1].clone();
        let h = http.clone();
        let me = Arc::new(move |_: usize, _: u64| {
            let (h, quiet) = (h.clone(), quiet.clone());
            async move {
                h.gql(Some(&quiet.tenant), Some(&quiet.token), "{ me { id email } }", json!({})).await?;
                Ok(())
            }
        });
        let (unloaded, loaded) = paired(duration, &drain, |flooded, slice, first| {
            let (me, http, noisy) = (me.clone(), http.clone(), noisy.clone());
            async move {
                let flood_until = Instant::now() + slice;
                let mut flood = tokio::task::JoinSet::new();
                for _ in 0..if flooded { 64 } else { 0 } {
                    let (h, noisy) = (http.clone(), noisy.clone());
                    flood.spawn(async move {
                        while Instant::now() < flood_until {
                            let email = format!("owner@{}.test", noisy.tenant);
                            let _ = h
                                .gql(
                                    Some(&noisy.tenant),
                                    None,
                                    LOGIN,
                                    json!({ "i": { "email": email, "password": "owner-password" } }),
                                )
                                .await;
                        }
                    });
                }
                let s = sample(1, slice, first, &me).await;
                while flood.join_next().await.is_some() {}
                s
            }
        })
        .await?;
        let unloaded = unloaded.stats("I unloaded", 1);
        let mut i_stats = loaded.stats("I query me, neighbour floods logins", 1);
        i_stats.windows.extend(unloaded.windows.iter().map(|w| Window { side: "unloaded", ..w.clone() }));
        i_stats.extra.insert("unloaded_p99_us".into(), unloaded.p99_us as f64);
        i_stats.extra.insert("p99_vs_unloaded".into(), i_stats.p99_us as f64 / unloaded.p99_us.max(1) as f64);
        results.push(i_stats);
    }

    if let Some(sink) = fixture.sink.as_ref().filter(|_| fixture.wants('M')) {
        mail(nc, fixture, sink, &http.client, results).await?;
    }

    if fixture.wants('N') {
        cluster(http, nc, fixture, &owners, &drain, &publish, results).await?;
    }
    if fixture.wants('F') {
        activation(nc, fixture, owners[0].clone(), results).await?;
    }
    if fixture.wants('G') {
        memory(nc, fixture, results).await?;
    }
    Ok(())
}

/// N: the cluster on one machine. Two more nodes join the bench's NATS (the
/// same master key, data of their own); then a profile update is sent to
/// the node holding the tenant's lease (one hop, as the edge sends it when it
/// knows the owner) and to another node, which forwards it (the hop's cost:
/// compare the two p50s at concurrency 1); and, once the tenants have spread
/// over the three nodes, B again with each command sent to its tenant's
/// owner. On 2 cores three nodes share what one had.
async fn cluster<B, BFut>(
    http: &Http,
    nc: &async_nats::Client,
    fixture: &Fixture,
    owners: &Arc<Vec<Actor>>,
    drain: &Drain,
    publish: &Arc<B>,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()>
where
    B: Fn(usize, u64) -> BFut + Send + Sync + 'static,
    BFut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut joined = Vec::new();
    for i in 2..=3 {
        let mut config = fixture.node_config.clone();
        config.data_dir = fixture.root.join(format!("node-{i}"));
        config.bootstrap_admin_email = None;
        config.bootstrap_admin_password = None;
        joined.push(start_node(config, &http.client).await?);
    }
    let js = async_nats::jetstream::new(nc.clone());
    let placement = js.get_key_value(crate::cluster::placement::BUCKET).await?;
    let members = js.get_key_value(crate::cluster::membership::BUCKET).await?;
    let holders = || async {
        let mut out = std::collections::HashMap::new();
        for o in owners.iter() {
            if let Some(v) = placement.get(&o.tenant).await? {
                let node: Value = serde_json::from_slice(&v)?;
                out.insert(o.tenant.clone(), node["node"].as_str().unwrap_or_default().to_owned());
            }
        }
        anyhow::Ok(out)
    };
    let mut ids = Vec::new();
    let mut keys = members.keys().await?;
    while let Some(k) = futures::StreamExt::next(&mut keys).await {
        ids.push(k?);
    }
    // The tenants spread over the three nodes, a few per lease renewal; each
    // round of updates keeps every tenant held (or takes it on its new node).
    let deadline = Instant::now() + if fixture.quick { Duration::from_secs(5) } else { Duration::from_secs(120) };
    let spread = loop {
        for (i, o) in owners.iter().enumerate() {
            update_profile(nc.clone(), o.clone(), i as u64).await?;
        }
        let held = holders().await?;
        let mut per: std::collections::HashMap<&String, usize> = std::collections::HashMap::new();
        for n in held.values() {
            *per.entry(n).or_default() += 1;
        }
        let most = per.values().copied().max().unwrap_or(0);
        if (per.len() == 3 && most <= owners.len().div_ceil(3) + owners.len() / 10) || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let (spread, ids) = (Arc::new(spread), Arc::new(ids));
    // To the owner, or to another node that forwards it; a tenant without a
    // holder at the moment (being handed over) goes to any node.
    let subject =
        move |spread: &std::collections::HashMap<String, String>, ids: &[String], who: &Actor, forwarded: bool| {
            let scope = Scope::Tenant(TenantId::parse(&who.tenant).expect("a fixture's slug"));
            match spread.get(&who.tenant) {
                Some(owner) if forwarded => match ids.iter().find(|id| *id != owner) {
                    Some(other) => crate::router::node_subject(other, &scope, "account"),
                    None => command_subject(&scope, "account"),
                },
                Some(owner) => crate::router::node_subject(owner, &scope, "account"),
                None => command_subject(&scope, "account"),
            }
        };
    for forwarded in [false, true] {
        let (nc, owners, spread, ids) = (nc.clone(), owners.clone(), spread.clone(), ids.clone());
        let name =
            if forwarded { "N command through another node (forwarded)" } else { "N command to the tenant's owner" };
        results.push(
            measure(name, 1, fixture.duration, move |w, i| {
                let who = owners[pick(owners.len(), 1, w, i)].clone();
                let to = subject(&spread, &ids, &who, forwarded);
                update_profile_to(nc.clone(), to, who, i)
            })
            .await?,
        );
    }
    let level = fixture.levels[1];
    let (nc2, owners2) = (nc.clone(), owners.clone());
    let mut stats = measure_against(
        "N B over 3 nodes, to each tenant's owner",
        level,
        fixture.duration,
        drain,
        publish,
        move |w, i| {
            let who = owners2[pick(owners2.len(), level, w, i)].clone();
            let to = subject(&spread, &ids, &who, false);
            update_profile_to(nc2.clone(), to, who, i)
        },
    )
    .await?;
    let nodes_used = holders().await?.values().collect::<std::collections::HashSet<_>>().len();
    stats.extra.insert("nodes_holding_tenants".into(), nodes_used as f64);
    results.push(stats);
    for (_, stop, task) in joined {
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(())
}

const REFRESH: &str = "mutation($t: String!) { refreshSession(input: {refreshToken: $t}) { token refreshToken } }";

/// R: `refreshSession` over GraphQL HTTP, at each level, against the paired
/// raw-JetStream baseline like B and C. A refresh is an account command as a
/// profile update is (one appended event, `SessionRefreshed`), plus what the
/// edge adds: the rate limit's counter (two KV reads and a write per request),
/// two keyed hashes of refresh tokens and a signed access token. It answers at
/// the append's ack, without C's read-your-writes wait.
///
/// Each worker signs in once before the measurement (a sign-in hashes a
/// password, which would dominate the figure) and owns that session: a
/// refresh token works once, so two workers sharing one would revoke it. With
/// 100 tenants every worker at 64 has an account of its own, as in B.
/// Workers send their own client address, as 64 users would have; the second
/// row at the highest level sends all of them from the bench's one address,
/// where every refresh counts against the same rate-limit counter.
impl Http {
    /// The node's base address (`http://host:port`).
    fn base(&self) -> &str {
        self.url.trim_end_matches("/graphql")
    }

    /// A JSON request to a REST path with a bearer token; fails on an error answer.
    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base()))
            .header("authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let res = req.send().await?;
        let status = res.status();
        let v: Value = serde_json::from_str(&res.text().await?)?;
        if !status.is_success() {
            bail!("{status}: {v}");
        }
        Ok(v)
    }

    /// A request to a module version's GraphQL; fails on an error answer.
    async fn module_gql(&self, path: &str, token: &str, query: &str, vars: Value) -> anyhow::Result<Value> {
        let v: Value = serde_json::from_str(
            &self
                .client
                .post(format!("{}{path}", self.base()))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(json!({ "query": query, "variables": vars }).to_string())
                .send()
                .await?
                .text()
                .await?,
        )?;
        if let Some(e) = v.get("errors") {
            bail!("graphql error: {e}");
        }
        Ok(v)
    }
}

/// J: a record create over REST and over the module's GraphQL, at each level
/// against raw JetStream (as B and C), and a page of 100 records with a
/// reference each, resolved, over the module's GraphQL.
async fn modules<B, BFut>(
    http: &Http,
    fixture: &Fixture,
    owners: &Arc<Vec<Actor>>,
    drain: &Drain,
    publish: &Arc<B>,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()>
where
    B: Fn(usize, u64) -> BFut + Send + Sync + 'static,
    BFut: Future<Output = anyhow::Result<()>> + Send,
{
    const SUBSCRIBE: &str = "mutation { subscribeModule(input: {name: \"contacts\", version: \"v1\"}) { applied } }";
    for o in owners.iter() {
        http.gql(Some(&o.tenant), Some(&o.token), SUBSCRIBE, json!({})).await?;
    }
    for &c in &fixture.levels {
        let (rest_owners, h) = (owners.clone(), http.clone());
        results.push(
            measure_against("J record create over REST", c, fixture.duration, drain, publish, move |w, i| {
                let who = rest_owners[pick(rest_owners.len(), c, w, i)].clone();
                let h = h.clone();
                async move {
                    let path = format!("/t/{}/contacts/v1/contact", who.tenant);
                    h.rest(
                        reqwest::Method::POST,
                        &path,
                        &who.token,
                        Some(json!({ "name": format!("R{w}-{i}"), "status": "lead" })),
                    )
                    .await?;
                    Ok(())
                }
            })
            .await?,
        );
        let (gql_owners, h) = (owners.clone(), http.clone());
        results.push(
            measure_against("J record create over module GraphQL", c, fixture.duration, drain, publish, move |w, i| {
                let who = gql_owners[pick(gql_owners.len(), c, w, i)].clone();
                let h = h.clone();
                async move {
                    let path = format!("/t/{}/contacts/v1/graphql", who.tenant);
                    h.module_gql(
                        &path,
                        &who.token,
                        "mutation($n: String!) { createContact(input: {name: $n}) { id } }",
                        json!({ "n": format!("G{w}-{i}") }),
                    )
                    .await?;
                    Ok(())
                }
            })
            .await?,
        );
    }
    // The page: 100 contacts of one tenant, each referencing one of 10 companies.
    let o = owners[0].clone();
    let mut companies = Vec::new();
    for k in 0..10 {
        let v = http
            .rest(
                reqwest::Method::POST,
                &format!("/t/{}/contacts/v1/company", o.tenant),
                &o.token,
                Some(json!({ "name": format!("Company {k}") })),
            )
            .await?;
        companies.push(v["data"]["id"].as_str().context("no company id")?.to_owned());
    }
    for k in 0..100 {
        let body = json!({ "name": format!("Paged {k:03}"), "company": companies[k % 10] });
        http.rest(reqwest::Method::POST, &format!("/t/{}/contacts/v1/contact", o.tenant), &o.token, Some(body)).await?;
    }
    let page = "{ contacts(filter: {name: {contains: \"paged\"}}, first: 100) { totalCount nodes { name company { name } } } }";
    for &c in &fixture.levels {
        let (o, h) = (o.clone(), http.clone());
        results.push(
            measure("J page of 100 records with references", c, fixture.duration, move |_, _| {
                let (o, h) = (o.clone(), h.clone());
                async move {
                    let v = h
                        .module_gql(&format!("/t/{}/contacts/v1/graphql", o.tenant), &o.token, page, json!({}))
                        .await?;
                    anyhow::ensure!(
                        v["data"]["contacts"]["nodes"].as_array().map(Vec::len) == Some(100),
                        "not a page of 100: {v}"
                    );
                    Ok(())
                }
            })
            .await?,
        );
    }
    Ok(())
}

async fn refresh<B, BFut>(
    http: &Http,
    fixture: &Fixture,
    owners: &Arc<Vec<Actor>>,
    drain: &Drain,
    publish: &Arc<B>,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()>
where
    B: Fn(usize, u64) -> BFut + Send + Sync + 'static,
    BFut: Future<Output = anyhow::Result<()>> + Send,
{
    let workers = *fixture.levels.iter().max().expect("levels");
    // Each worker's tenant and newest refresh token. A worker's slot is only
    // ever used by that worker, so the lock is never contended.
    let mut sessions = Vec::with_capacity(workers);
    for w in 0..workers {
        let who = &owners[w % owners.len()];
        let email = format!("owner@{}.test", who.tenant);
        let v = http
            .gql(
                Some(&who.tenant),
                None,
                "mutation($i: LoginInput!) { login(input: $i) { refreshToken } }",
                json!({ "i": { "email": email, "password": "owner-password" } }),
            )
            .await?;
        let refresh_token = v["data"]["login"]["refreshToken"].as_str().context("no refresh token")?.to_owned();
        sessions.push((who.tenant.clone(), std::sync::Mutex::new(refresh_token)));
    }
    let sessions = Arc::new(sessions);
    let top = workers;
    let rows = fixture.levels.iter().map(|&c| (c, true)).chain([(top, false)]);
    for (c, own_address) in rows {
        let (http, sessions) = (http.clone(), sessions.clone());
        let name =
            if own_address { "R refreshSession through GraphQL" } else { "R refreshSession, one client address" };
        results.push(
            measure_against(name, c, fixture.duration, drain, publish, move |w, _| {
                let (http, sessions) = (http.clone(), sessions.clone());
                async move {
                    let (tenant, slot) = &sessions[w];
                    let presented = slot.lock().expect("a worker's own session").clone();
                    let from = own_address.then(|| {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, (w / 250) as u8, (w % 250) as u8 + 1))
                    });
                    let v = http.gql_from(from, Some(tenant), None, REFRESH, json!({ "t": presented })).await?;
                    let next = v["data"]["refreshSession"]["refreshToken"].as_str().context("no refresh token")?;
                    *slot.lock().expect("a worker's own session") = next.to_owned();
                    Ok(())
                }
            })
            .await?,
        );
    }
    Ok(())
}

/// `scripts/smtp_sink.py`, the test suite's SMTP server (aiosmtpd), on a free
/// port of 127.0.0.1: it writes every mail it accepts to `dir` as `<n>.eml`,
/// fsynced. Killed when dropped.
pub struct SmtpSink {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl SmtpSink {
    /// Starts the sink and waits until it takes connections; an error (no
    /// python3, no aiosmtpd) says why, so that M can be skipped.
    async fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtp_sink.py");
        // A port the kernel found free; the sink binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Its output goes to a file: a pipe nobody reads would stop it once full.
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path)?;
        let child = std::process::Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("while starting python3 scripts/smtp_sink.py")?;
        let mut sink = Self { child, port, dir: dir.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if sink.child.try_wait()?.is_some() {
                let why = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = why.lines().last().unwrap_or("no output").to_owned();
                bail!("the SMTP sink (scripts/smtp_sink.py) exited: {last} (pip install aiosmtpd)");
            }
            if Instant::now() > deadline {
                bail!("the SMTP sink did not listen on port {port} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(sink)
    }

    /// The relay URL for the node: plain SMTP, as the sink offers no STARTTLS.
    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// How many mails the sink has written.
    fn received(&self) -> anyhow::Result<usize> {
        let names = std::fs::read_dir(&self.dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok());
        Ok(names.filter(|n| n.ends_with(".eml") && !n.starts_with('.')).count())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// P: push fan-out. 1,000 NATS clients of one tenant (each signed in through
/// the auth callout with the owner's session token) subscribe to one topic;
/// 100 messages are published one after another with `publishMessage`. The
/// rate is the deliveries (messages times clients) over the time from the
/// first publish to the last delivery; a latency is from a message's
/// `publishMessage` call to one client's delivery of it.
async fn push_fanout(http: &Http, fixture: &Fixture, owner: &Actor, results: &mut Vec<Stats>) -> anyhow::Result<()> {
    let (clients, messages) = if fixture.quick { (10, 5) } else { (1000, 100) };
    let subject = format!("push.{}.fanout", owner.tenant);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut connected = Vec::with_capacity(clients);
    let mut readers = tokio::task::JoinSet::new();
    for chunk in (0..clients).collect::<Vec<_>>().chunks(32) {
        let logins = chunk.iter().map(|_| {
            async_nats::ConnectOptions::with_user_and_password(owner.tenant.clone(), owner.token.clone())
                .connect(fixture.nats_url.as_str())
        });
        for client in futures::future::join_all(logins).await {
            let client = client.context("a push client could not connect")?;
            let mut sub = client.subscribe(subject.clone()).await?;
            client.flush().await?;
            let tx = tx.clone();
            readers.spawn(async move {
                while let Some(m) = futures::StreamExt::next(&mut sub).await {
                    let i: usize = std::str::from_utf8(&m.payload).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let _ = tx.send((i, Instant::now()));
                }
            });
            connected.push(client);
        }
    }
    drop(tx);
    const PUBLISH: &str = "mutation($p: String!) { publishMessage(input: {topic: \"fanout\", payload: $p}) { id } }";
    let (started, since, cpu) = (Instant::now(), monotonic(), process_cpu());
    let mut sent_at = Vec::with_capacity(messages);
    for i in 0..messages {
        sent_at.push(Instant::now());
        http.gql(Some(&owner.tenant), Some(&owner.token), PUBLISH, json!({ "p": i.to_string() })).await?;
    }
    let want = messages * clients;
    let mut lat = Vec::with_capacity(want);
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.len() < want {
        let Ok(Some((i, at))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            bail!("{} of {want} pushes arrived within the deadline", lat.len());
        };
        lat.push(at.saturating_duration_since(sent_at[i.min(messages - 1)]).as_micros() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut st = from_samples(&format!("P push fan-out to {clients} NATS clients"), lat, secs);
    st.concurrency = clients;
    st.windows = vec![Window { side: "measured", start: since, end: monotonic() }];
    st.extra.insert("messages".into(), messages as f64);
    st.extra.insert("cpu_us_per_delivery".into(), (process_cpu() - cpu) * 1e6 / want as f64);
    results.push(st);
    readers.abort_all();
    drop(connected);
    Ok(())
}

/// A webhook endpoint on this host: it notes when each delivery of a
/// published message arrives (by the message's id, the event's aggregate id)
/// and answers 204, after `delay` when the path is `/slow`.
struct Receiver {
    url: String,
    arrived: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(delay: Duration) -> anyhow::Result<Self> {
        use poem::listener::{Acceptor, Listener};
        let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let endpoint = poem::endpoint::make(move |req: poem::Request| {
            let tx = tx.clone();
            async move {
                let slow = req.uri().path() == "/slow";
                let body = req.into_body().into_bytes().await.unwrap_or_default();
                let id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["data"]["aggregate_id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = tx.send((id, Instant::now()));
                if slow {
                    tokio::time::sleep(delay).await;
                }
                poem::http::StatusCode::NO_CONTENT
            }
        });
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the receiver has no address")?;
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(endpoint).await;
        });
        Ok(Self { url: format!("http://{addr}"), arrived, server })
    }
}

/// Waits until the push and webhook reactors have acknowledged every event.
async fn reactors_caught_up(nc: &async_nats::Client) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nc.clone());
    let events = js.get_stream(actors::store::event_store::STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for name in [crate::outbound::webhook::CONSUMER, crate::outbound::push::CONSUMER] {
        loop {
            // A reactor that does not run here (push, without NATS keys) has no consumer.
            let Ok(info) = events.consumer_info(name).await else { break };
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not catch up with the log");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Creates a webhook of `owner`'s tenant for published messages.
async fn message_webhook(http: &Http, owner: &Actor, url: &str) -> anyhow::Result<()> {
    const CREATE: &str = "mutation($u: String!) { createWebhook(input: {name: \"bench\", url: $u, eventTypes: [\"MessagePublished\"]}) { secret } }";
    let r = http.gql(Some(&owner.tenant), Some(&owner.token), CREATE, json!({ "u": url })).await?;
    if r["data"]["createWebhook"]["secret"].as_str().is_none() {
        bail!("no webhook: {r}");
    }
    Ok(())
}

/// Publishes `n` messages for `owner` from `workers` tasks at once; each
/// message's id with the moment its publish was sent.
async fn publish_many(
    http: &Http,
    owner: &Actor,
    n: usize,
    workers: usize,
) -> anyhow::Result<std::collections::HashMap<String, Instant>> {
    const PUBLISH: &str = "mutation($p: String!) { publishMessage(input: {topic: \"hooks\", payload: $p}) { id } }";
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks = (0..workers).map(|_| {
        let (http, owner, next) = (http.clone(), owner.clone(), next.clone());
        async move {
            let mut sent = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let at = Instant::now();
                let r = http.gql(Some(&owner.tenant), Some(&owner.token), PUBLISH, json!({ "p": "x" })).await?;
                let id = r["data"]["publishMessage"]["id"].as_str().with_context(|| format!("{r}"))?.to_owned();
                sent.push((id, at));
            }
            anyhow::Ok(sent)
        }
    });
    let mut all = std::collections::HashMap::with_capacity(n);
    for sent in futures::future::join_all(tasks).await {
        all.extend(sent?);
    }
    Ok(all)
}

/// Waits for the deliveries of `sent` at `receiver`: each one's latency from
/// its publish to its arrival, and the time of the last arrival.
async fn arrivals(
    receiver: &mut Receiver,
    sent: &std::collections::HashMap<String, Instant>,
) -> anyhow::Result<(Vec<u64>, Instant)> {
    let mut lat = Vec::with_capacity(sent.len());
    let mut seen = std::collections::HashSet::with_capacity(sent.len());
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < sent.len() {
        let Ok(Some((id, at))) = tokio::time::timeout_at(deadline.into(), receiver.arrived.recv()).await else {
            bail!("{} of {} webhook deliveries arrived within the deadline", seen.len(), sent.len());
        };
        if let Some(t0) = sent.get(&id)
            && seen.insert(id)
        {
            lat.push(at.saturating_duration_since(*t0).as_micros() as u64);
            last = at;
        }
    }
    Ok((lat, last))
}

/// W: webhook deliveries per second to an endpoint on this host (messages
/// published from 16 clients, each delivered to one webhook); then a second
/// tenant's delivery latency while a first publishes as much, first with a
/// fast endpoint (the baseline, at the same load) and then with one that
/// takes two seconds to answer: the second tenant's p99 next to the
/// baseline's (target: within 2x).
async fn webhooks(
    http: &Http,
    nc: &async_nats::Client,
    fixture: &Fixture,
    owners: &[Actor],
    results: &mut Vec<Stats>,
) -> anyhow::Result<()> {
    let (n, isolated) = if fixture.quick { (40, 20) } else { (3_000, 500) };
    // The reactors start at the log's first event: they work through the
    // fixtures' before W is timed, as they would have long before in a
    // running deployment.
    reactors_caught_up(nc).await?;
    let (slow_one, fast_one) = match owners {
        [a, b, ..] => (a, b),
        _ => bail!("W needs two tenants"),
    };
    let mut fast = Receiver::start(Duration::ZERO).await?;
    let mut slow = Receiver::start(Duration::from_secs(2)).await?;
    message_webhook(http, fast_one, &format!("{}/fast", fast.url)).await?;

    let (started, since, cpu) = (Instant::now(), monotonic(), process_cpu());
    let sent = publish_many(http, fast_one, n, 16).await?;
    let (lat, last) = arrivals(&mut fast, &sent).await?;
    let mut st = from_samples("W webhook deliveries to a local endpoint", lat, (last - started).as_secs_f64());
    st.concurrency = 16;
    st.windows = vec![Window { side: "measured", start: since, end: monotonic() }];
    st.extra.insert("cpu_us_per_delivery".into(), (process_cpu() - cpu) * 1e6 / n as f64);
    results.push(st);

    // The second tenant beside a first one publishing as much, whose endpoint
    // is fast: the baseline, at the same load.
    message_webhook(http, slow_one, &format!("{}/a", fast.url)).await?;
    let beside = |label: &'static str| async move {
        let started = Instant::now();
        let (a, b) = tokio::join!(publish_many(http, slow_one, isolated, 8), publish_many(http, fast_one, isolated, 8));
        let (_, b) = (a?, b?);
        anyhow::Ok((label, started, b))
    };
    let (label, started, sent) = beside("W tenant B beside tenant A, both endpoints fast").await?;
    let (lat, last) = arrivals(&mut fast, &sent).await?;
    let mut baseline = from_samples(label, lat, (last - started).as_secs_f64());
    baseline.concurrency = 8;

    // Now tenant A's endpoint answers after two seconds.
    const LIST: &str = "{ webhooks { id } }";
    let r = http.gql(Some(&slow_one.tenant), Some(&slow_one.token), LIST, json!({})).await?;
    let id = r["data"]["webhooks"][0]["id"].as_str().with_context(|| format!("{r}"))?.to_owned();
    const UPDATE: &str = "mutation($id: ID!, $u: String!) { updateWebhook(input: {id: $id, url: $u}) { id } }";
    let r = http
        .gql(
            Some(&slow_one.tenant),
            Some(&slow_one.token),
            UPDATE,
            json!({ "id": id, "u": format!("{}/slow", slow.url) }),
        )
        .await?;
    if r["errors"].is_array() {
        bail!("the webhook was not moved: {r}");
    }
    // The deliverer reads a tenant's webhooks at most a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (label, started, sent) = beside("W tenant B beside tenant A's two-second endpoint").await?;
    let (lat, last) = arrivals(&mut fast, &sent).await?;
    let mut st = from_samples(label, lat, (last - started).as_secs_f64());
    st.concurrency = 8;
    st.p99_vs_baseline = Some(st.p99_us as f64 / baseline.p99_us.max(1) as f64);
    st.extra.insert("baseline_p50_us".into(), baseline.p50_us as f64);
    st.extra.insert("baseline_p99_us".into(), baseline.p99_us as f64);
    // How far A got meanwhile: its endpoint holds `webhook_concurrency` calls.
    let mut a_arrived = 0;
    while slow.arrived.try_recv().is_ok() {
        a_arrived += 1;
    }
    st.extra.insert("slow_tenant_deliveries_started".into(), a_arrived as f64);
    results.push(baseline);
    results.push(st);
    fast.server.abort();
    slow.server.abort();
    Ok(())
}

/// M: mails through the `MAIL` queue to a real SMTP server on this host. A
/// burst of distinct mails is enqueued as the reactors do (`mail::enqueue`,
/// from 16 tasks at once), and the rate is the burst's size over the time from
/// the first enqueue to the node counting the last one sent
/// (`canopy_mail_sent_total`, polled every 5 ms). The burst's latencies pair
/// the k-th acknowledged enqueue with the k-th mail counted sent: the queue
/// hands mails out in order, and only the mailer's few in flight can swap
/// neighbours, so they are the wait in the queue plus the send. A second row
/// sends one mail at a time (enqueue to counted sent, polled every 1 ms): the
/// latency of a mail that finds the queue empty.
async fn mail(
    nc: &async_nats::Client,
    fixture: &Fixture,
    sink: &SmtpSink,
    client: &reqwest::Client,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()> {
    use crate::outbound::mail::{MailKind, OutgoingMail, STREAM, TemplateVars, enqueue, render};

    let (burst, alone_rounds) = if fixture.quick { (40, 3) } else { (2_000, 20) };
    let js = async_nats::jetstream::new(nc.clone());
    let sent = || async {
        let metrics = client.get(&fixture.metrics).send().await?.text().await?;
        anyhow::Ok(gauge(&metrics, "canopy_mail_sent_total") as u64)
    };
    // The fixtures' own mails (verification of the registrations) leave first.
    let deadline = Instant::now() + Duration::from_secs(120);
    while js.get_stream(STREAM).await?.cached_info().state.messages > 0 {
        if Instant::now() > deadline {
            bail!("the fixtures' mails did not leave MAIL within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scope = Scope::Tenant(TenantId::parse("bench-0")?);
    let vars = TemplateVars {
        tenant_name: "Bench".into(),
        first_name: "Ada".into(),
        code: Some("123456".into()),
        link: Some("https://bench-0.canopy.test/verify?code=123456".into()),
        expires_in: 15,
        ..TemplateVars::default()
    };
    let rendered = render(MailKind::VerifyEmail, "en", &vars)?;
    let run = uuid::Uuid::now_v7().simple();
    let letter = move |i: usize| {
        let mail = OutgoingMail::new(
            format!("user{i}@bench.test"),
            Some("Ada Bench".into()),
            &scope,
            MailKind::VerifyEmail,
            rendered.clone(),
        );
        (format!("bench-mail-{run}-{i}"), mail)
    };
    let received_before = sink.received()?;

    // The burst.
    let base = sent().await?;
    let (started, since, cpu) = (Instant::now(), monotonic(), process_cpu());
    let queued = Arc::new(std::sync::Mutex::new(Vec::with_capacity(burst)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut enqueuers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (js, queued, next, letter) = (js.clone(), queued.clone(), next.clone(), letter.clone());
        enqueuers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= burst {
                    return anyhow::Ok(());
                }
                let (id, mail) = letter(i);
                if !enqueue(&js, &id, &mail).await? {
                    bail!("mail {id} was taken for a duplicate");
                }
                queued.lock().expect("the enqueue times").push(Instant::now());
            }
        });
    }
    let mut sent_at = Vec::with_capacity(burst);
    let deadline = Instant::now() + Duration::from_secs(if fixture.quick { 60 } else { 300 });
    while sent_at.len() < burst {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = Instant::now();
        let count = (sent().await?.saturating_sub(base) as usize).min(burst);
        sent_at.resize(count.max(sent_at.len()), now);
        while let Some(r) = enqueuers.try_join_next() {
            r??;
        }
        if now > deadline {
            bail!("{} of {burst} mails were sent within the deadline", sent_at.len());
        }
    }
    while let Some(r) = enqueuers.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    let window = (since, monotonic());
    let cpu_secs = process_cpu() - cpu;
    let mut queued = std::mem::take(&mut *queued.lock().expect("the enqueue times"));
    queued.sort_unstable();
    let enqueued_in = queued.last().map_or(0.0, |q| q.duration_since(started).as_secs_f64());
    let lat = queued.iter().zip(&sent_at).map(|(q, s)| s.saturating_duration_since(*q).as_micros() as u64).collect();
    let mut st = from_samples("M mail queue to SMTP sink, burst", lat, secs);
    st.concurrency = crate::outbound::mail::mailer::CONCURRENT;
    st.windows = vec![Window { side: "measured", start: window.0, end: window.1 }];
    st.extra.insert("enqueue_per_sec".into(), burst as f64 / enqueued_in.max(f64::MIN_POSITIVE));
    st.extra.insert("cpu_us_per_op".into(), cpu_secs * 1e6 / burst as f64);
    st.extra.insert("sink_received".into(), sink.received()?.saturating_sub(received_before) as f64);
    results.push(st);

    // One mail at a time.
    let mut lat = Vec::with_capacity(alone_rounds);
    let (started, since) = (Instant::now(), monotonic());
    for r in 0..alone_rounds {
        let (id, mail) = letter(burst + r);
        let before = sent().await?;
        let t = Instant::now();
        enqueue(&js, &id, &mail).await?;
        let deadline = t + Duration::from_secs(30);
        while sent().await? <= before {
            if Instant::now() > deadline {
                bail!("a mail alone was not sent within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.push(t.elapsed().as_micros() as u64);
    }
    let mut st = from_samples("M mail queue to SMTP sink, one at a time", lat, started.elapsed().as_secs_f64());
    st.windows = vec![Window { side: "measured", start: since, end: monotonic() }];
    results.push(st);
    Ok(())
}

async fn bench_deps(
    nc: &async_nats::Client,
    fixture: &Fixture,
    snapshot_every: u64,
) -> anyhow::Result<actors::tree::deps::Deps> {
    let (store, keys) = actors::store::event_store::EventStore::open(nc.clone(), 1).await?;
    Ok(actors::tree::deps::Deps {
        store,
        keys: actors::store::seal::KeyRing::new(keys, fixture.master.clone()),
        hasher: actors::hasher::Hasher::new(1, actors::hasher::owasp_params()),
        snapshot_every,
        cache_per_tenant: 1000,
        accounts: Default::default(),
        modules: std::sync::Arc::new(actors::domain::manifest::Registry::empty()),
    })
}

/// F: the time to start a cold tenant tree and load an account with N events,
/// from its snapshot plus newer events, or from its first event.
async fn activation(
    nc: &async_nats::Client,
    fixture: &Fixture,
    owner: Actor,
    results: &mut Vec<Stats>,
) -> anyhow::Result<()> {
    use actors::domain::account::Account;
    use actors::tree::{NodeArgs, NodeMsg, NodeSupervisor};
    use ractor::Actor as _;

    let sizes: &[u64] = if fixture.quick { &[20, 200] } else { &[100, 10_000] };
    let rounds = if fixture.quick { 3 } else { 20 };
    let deps = bench_deps(nc, fixture, 100).await?;
    let scope = Scope::Tenant(TenantId::parse(&owner.tenant)?);
    for &n in sizes {
        // Bring the owner's account to n events (the earlier scenarios wrote some).
        let have =
            actors::tree::executor::replay_all::<Account>(&deps.store, &scope, &owner.account_id).await?.since_snapshot;
        let mut pending = tokio::task::JoinSet::new();
        for k in have..n {
            pending.spawn(update_profile(nc.clone(), owner.clone(), k));
            if pending.len() >= 32 {
                pending.join_next().await.transpose()?.transpose()?;
            }
        }
        while let Some(r) = pending.join_next().await {
            r??;
        }
        for snapshot in [true, false] {
            let mut lat = Vec::with_capacity(rounds);
            let started = Instant::now();
            for _ in 0..rounds {
                let (node, handle) = NodeSupervisor::spawn(
                    None,
                    NodeSupervisor,
                    NodeArgs {
                        deps: deps.clone(),
                        idle_timeout: Duration::from_secs(600),
                        children: actors::tree::CHILDREN,
                    },
                )
                .await?;
                let t = Instant::now();
                match node.call(|p| NodeMsg::Tree(scope.clone(), p), Some(Duration::from_secs(10))).await? {
                    ractor::rpc::CallResult::Success(Ok(_)) => {}
                    _ => bail!("no tree for {scope}"),
                }
                let loaded = if snapshot {
                    actors::tree::executor::load::<Account>(&deps.store, &scope, &owner.account_id).await?
                } else {
                    actors::tree::executor::replay_all::<Account>(&deps.store, &scope, &owner.account_id).await?
                };
                lat.push(t.elapsed().as_micros() as u64);
                if !loaded.state.is_registered() {
                    bail!("activation loaded an empty account");
                }
                node.stop(None);
                let _ = handle.await;
            }
            let label = format!("F activation {n} events, {}", if snapshot { "snapshot" } else { "no snapshot" });
            let mut st = from_samples(&label, lat, started.elapsed().as_secs_f64());
            st.extra.insert("events".into(), n as f64);
            results.push(st);
        }
    }
    Ok(())
}

/// G: resident memory per live idle tenant tree, and after they passivate. The
/// trees are children of a NodeSupervisor, which releases their memory when they
/// stop, as in a node (they are spawned directly: 10,000 real tenants would take
/// 10,000 owner registrations to create).
async fn memory(nc: &async_nats::Client, fixture: &Fixture, results: &mut Vec<Stats>) -> anyhow::Result<()> {
    use actors::tree::{NodeArgs, NodeSupervisor, TenantArgs, TenantSupervisor};
    use ractor::Actor as _;

    let trees = if fixture.quick { 200 } else { 10_000 };
    let deps = bench_deps(nc, fixture, 100).await?;
    let (node, node_handle) = NodeSupervisor::spawn(
        None,
        NodeSupervisor,
        NodeArgs { deps: deps.clone(), idle_timeout: Duration::from_secs(3600), children: actors::tree::CHILDREN },
    )
    .await?;
    // Start from a heap with nothing free in it, so the trees cannot reuse memory
    // freed by earlier scenarios and look smaller than they are.
    actors::memory::release_now();
    let before = actors::memory::resident_bytes();
    let started = Instant::now();
    let mut live = Vec::with_capacity(trees);
    for t in 0..trees {
        let args = TenantArgs {
            scope: Scope::Tenant(TenantId::parse(&format!("mem-{t}"))?),
            deps: deps.clone(),
            idle_timeout: Duration::from_secs(3600),
            children: actors::tree::CHILDREN,
        };
        live.push(TenantSupervisor::spawn_linked(None, TenantSupervisor, args, node.get_cell()).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let with_trees = actors::memory::resident_bytes();
    for (tree, _) in &live {
        tree.stop(Some("passivate".into()));
    }
    for (_, handle) in live {
        let _ = handle.await;
    }
    // The node hands the stopped trees' memory back `memory::DELAY` after they stop.
    tokio::time::sleep(actors::memory::DELAY + Duration::from_millis(500)).await;
    let after = actors::memory::resident_bytes();
    node.stop(None);
    let _ = node_handle.await;
    let mut st = from_samples("G memory per idle tenant tree", Vec::new(), started.elapsed().as_secs_f64());
    st.concurrency = trees;
    st.ops = trees as u64;
    st.extra.insert("kib_per_live_tree".into(), with_trees.saturating_sub(before) as f64 / 1024.0 / trees as f64);
    st.extra
        .insert("kib_per_tree_after_passivation".into(), after.saturating_sub(before) as f64 / 1024.0 / trees as f64);
    results.push(st);
    Ok(())
}

/// A profile update for `who`, sent as a NATS request to the tenant's tree: the
/// cheap account command of B, E and F.
async fn update_profile(nc: async_nats::Client, who: Actor, n: u64) -> anyhow::Result<()> {
    let scope = Scope::Tenant(TenantId::parse(&who.tenant)?);
    update_profile_to(nc, command_subject(&scope, "account"), who, n).await
}

/// B's profile update, sent to `subject`.
async fn update_profile_to(nc: async_nats::Client, subject: String, who: Actor, n: u64) -> anyhow::Result<()> {
    let scope = Scope::Tenant(TenantId::parse(&who.tenant)?);
    let account_id = AccountId::parse(&who.account_id)?;
    let body = serde_json::to_vec(&CommandEnvelope {
        command_id: CommandId::fresh(),
        principal: Principal::Account { scope: scope.clone(), account_id: account_id.clone(), session_id: None },
        request: AccountRequest::UpdateProfile {
            account_id,
            firstname: PersonName::parse(&format!("N{n}"))?,
            lastname: PersonName::parse("Bench")?,
            locale: None,
        },
        client: None,
    })?;
    let reply = nc.request(subject, body.into()).await?;
    match serde_json::from_slice::<CommandResult<AccountReply>>(&reply.payload)? {
        Ok(_) => Ok(()),
        Err(f) => bail!("command failed: {f}"),
    }
}

/// Gives each of `c` workers its own share of `len` fixtures (worker w takes w,
/// w + c, w + 2c, ...), so concurrent workers never touch the same account.
fn pick(len: usize, c: usize, w: usize, i: u64) -> usize {
    let w = w % len;
    let share = (len - w).div_ceil(c).max(1);
    (w + (i as usize % share) * c) % len
}

/// Renders the report as a fixed-width table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "machine: {}\n{:<40} {:>6} {:>9} {:>10} {:>9} {:>9} {:>7} {:>7}  {}\n",
        report.machine, "scenario", "conc", "ops", "ops/s", "p50 µs", "p99 µs", "tput/A", "p99/A", "other"
    );
    for s in &report.results {
        let ratio = |r: Option<f64>| r.map_or("-".into(), |v| format!("{v:.2}"));
        out.push_str(&format!(
            "{:<40} {:>6} {:>9} {:>10.0} {:>9} {:>9} {:>7} {:>7}  {}\n",
            s.scenario,
            s.concurrency,
            s.ops,
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            ratio(s.throughput_vs_baseline),
            ratio(s.p99_vs_baseline),
            s.extra.iter().map(|(k, v)| format!("{k}={v:.2}")).collect::<Vec<_>>().join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn concurrent_workers_get_disjoint_fixtures() {
        for (len, c) in [(100, 64), (100, 1), (4, 64), (64, 64)] {
            let mut owner = vec![None; len];
            for w in 0..c.min(len) {
                for i in 0..200 {
                    let k = pick(len, c, w, i);
                    assert!(owner[k].is_none_or(|o| o == w), "len {len} c {c}: {k} shared");
                    owner[k] = Some(w);
                }
            }
            assert!(owner.iter().all(Option::is_some), "len {len} c {c}: every fixture is used");
        }
    }
}

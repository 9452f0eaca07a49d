//! The benchmark's quick mode runs every scenario and returns sane numbers (no
//! timing is asserted: speed is measured by `canopy-bench`, not tested).

#[tokio::test]
async fn the_quick_benchmark_runs_every_scenario() {
    let report =
        canopy_node::bench::run(canopy_node::bench::Options { quick: true, out: None, only: None }).await.unwrap();
    let names: std::collections::BTreeSet<&str> =
        report.results.iter().map(|s| s.scenario.split(' ').next().unwrap()).collect();
    // M needs aiosmtpd, as the mail tests do (scripts/test.sh installs it).
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["A", "A'", "B", "C", "D", "E", "F", "G", "H", "I", "J", "M", "N", "P", "R", "W"]
    );
    for s in &report.results {
        assert!(s.ops > 0, "{} ran nothing", s.scenario);
        assert!(s.p50_us <= s.p99_us, "{s:?}");
        if ["A", "B", "C", "D", "E", "F", "I", "J", "M", "P", "R", "W"].iter().any(|p| s.scenario.starts_with(p)) {
            assert!(s.ops_per_sec.is_finite() && s.ops_per_sec > 0.0, "{s:?}");
        }
        if ["A'", "B", "C", "D", "E", "R"].iter().any(|p| s.scenario.starts_with(p)) {
            assert!(s.throughput_vs_baseline.is_some_and(f64::is_finite), "{s:?}");
        }
        // A', B, C, E and R are measured in slices alternating with their own baseline.
        if ["A'", "B", "C", "E", "R"].iter().any(|p| s.scenario.starts_with(p)) {
            assert!(s.extra["paired_A_ops_per_sec"] > 0.0, "{s:?}");
            // The node's own CPU per command: this process's CPU clock, less what
            // the same clients spend on a raw publish.
            assert!(s.extra["cpu_us_per_op"] > 0.0 && s.extra["paired_A_cpu_us_per_op"] > 0.0, "{s:?}");
            assert!(s.extra["node_cpu_us_per_op"].is_finite(), "{s:?}");
        }
    }
    // H is measured from this node's acks, and from the stream's timestamps.
    let h = report.results.iter().find(|s| s.scenario.starts_with('H')).unwrap();
    assert!(h.extra["stored_p99_us"] > 0.0 && h.extra["stored_p50_us"] <= h.extra["stored_p99_us"], "{h:?}");
    let g = report.results.iter().find(|s| s.scenario.starts_with('G')).unwrap();
    assert!(g.extra["kib_per_live_tree"].is_finite());
    let i = report.results.iter().find(|s| s.scenario.starts_with('I')).unwrap();
    assert!(i.extra["p99_vs_unloaded"] > 0.0 && i.extra["unloaded_p99_us"] > 0.0, "{i:?}");
    // R runs at both levels from the workers' own addresses, and at the higher
    // one from a single address.
    let r: Vec<_> = report.results.iter().filter(|s| s.scenario.starts_with('R')).collect();
    assert_eq!(r.iter().map(|s| s.concurrency).collect::<Vec<_>>(), [1, 64, 64], "{r:?}");
    // M's burst reached the SMTP sink, every mail of it, and was timed from
    // each enqueue to its send.
    let burst = report.results.iter().find(|s| s.scenario.starts_with("M mail queue to SMTP sink, burst")).unwrap();
    assert!(burst.extra["sink_received"] >= burst.ops as f64, "{burst:?}");
    assert!(burst.extra["enqueue_per_sec"] > 0.0 && burst.p99_us > 0, "{burst:?}");
    assert_eq!(report.results.iter().filter(|s| s.scenario.starts_with('M')).count(), 2);
    // P delivered every message to every client, each timed from its publish.
    let p = report.results.iter().find(|s| s.scenario.starts_with('P')).unwrap();
    assert_eq!(p.ops as f64, p.extra["messages"] * p.concurrency as f64, "{p:?}");
    // W delivered every message to the endpoint, and compared the second
    // tenant's latency beside another's slow endpoint with the same load's.
    let w: Vec<_> = report.results.iter().filter(|s| s.scenario.starts_with('W')).collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!(w[0].ops, 40, "{w:?}");
    assert!(w[2].p99_vs_baseline.is_some_and(|r| r.is_finite() && r > 0.0), "{w:?}");
    assert!(w[2].extra["baseline_p99_us"] > 0.0, "{w:?}");
    // N: a command to the owner, one forwarded, and B over three nodes
    // (paired with A like B).
    let n: Vec<_> = report.results.iter().filter(|s| s.scenario.starts_with('N')).collect();
    assert_eq!(n.len(), 3, "{n:?}");
    assert!(n[2].throughput_vs_baseline.is_some() && n[2].extra["nodes_holding_tenants"] >= 1.0, "{n:?}");
    // F covers both sizes, with and without a snapshot.
    assert_eq!(report.results.iter().filter(|s| s.scenario.starts_with('F')).count(), 4);
    // Every measured stretch says when it ran, for splitting a profile by slice:
    // paired scenarios in alternating slices of each side, the others in one.
    let mut all = Vec::new();
    for s in &report.results {
        let count = |side: &str| s.windows.iter().filter(|w| w.side == side).count();
        let paired = ["A'", "B", "C", "E", "R", "N B"].iter().any(|p| s.scenario.starts_with(p));
        if paired {
            assert_eq!((count("measured"), count("baseline"), s.windows.len()), (4, 4, 8), "{s:?}");
        } else if s.scenario.starts_with('I') {
            assert_eq!((count("measured"), count("unloaded"), s.windows.len()), (4, 4, 8), "{s:?}");
        } else if ["A ", "D", "M", "P", "W webhook"].iter().any(|p| s.scenario.starts_with(p)) {
            assert_eq!((count("measured"), s.windows.len()), (1, 1), "{s:?}");
        }
        if !s.windows.is_empty() {
            // The windows and `ops_per_sec` time the same stretches.
            let measured: f64 = s.windows.iter().filter(|w| w.side == "measured").map(|w| w.end - w.start).sum();
            let secs = s.ops as f64 / s.ops_per_sec;
            assert!((measured - secs).abs() < 0.05 * secs + 0.01, "{measured} s in windows, {secs} s measured: {s:?}");
        }
        all.extend(s.windows.iter().map(|w| (w.start, w.end)));
    }
    // Scenarios and slices run one after another: no two windows overlap.
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(all.iter().all(|(start, end)| start < end), "{all:?}");
    assert!(all.windows(2).all(|p| p[0].1 <= p[1].0), "overlapping windows: {all:?}");
    let table = canopy_node::bench::table(&report);
    assert_eq!(table.lines().count(), report.results.len() + 2);
}

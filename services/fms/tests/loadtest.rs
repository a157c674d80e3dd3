//! Issue 10: `fms-loadtest` against `fms serve`. The `smoke` scenario (every kind of action:
//! REST, tus with interruptions, share, transform, dedup-aware gRPC, WebSocket subscribers)
//! and the report's counts agree with the server's own metrics; a step profile's capacity
//! search stops at the first step that breaks the SLO.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::*;
use fms_loadtest::run::Target;
use fms_loadtest::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let text = std::fs::read_to_string(format!(
        "{}/../../loadtest/scenarios/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    Scenario::parse(&text).unwrap()
}

fn serve() -> (Proc, Target) {
    // The store's totals every second, so the report has them at once.
    let p = spawn(
        &["serve"],
        &[("FMS_PICKER__STATS_INTERVAL", "1s".to_string())],
        true,
    );
    let target = Target {
        http: p.http.clone(),
        grpc: p.grpc.clone(),
        // The same process read as a "service" of its own: the per-service table.
        metrics: vec![("serve".to_string(), p.http.clone())],
    };
    (p, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_counts_match_the_server() {
    let (_p, target) = serve();
    let s = scenario("smoke");
    let report =
        fms_loadtest::run::run(&s, &target, false, Arc::new(AtomicBool::new(false)), |_| {})
            .await
            .unwrap();
    let r = &report.recorder;
    eprintln!("{}", report.markdown(s.slo.as_ref()));
    assert_eq!(r.errors(), 0, "{:#}", report.json(None));
    // 4 s at 40/s with a 1 s ramp: 140 arrivals, and one event per upload.
    let a = |name: &str| r.actions.get(name).unwrap_or_else(|| panic!("no {name}"));
    let uploads = ["upload", "tus_upload", "grpc_upload"];
    let uploaded: u64 = uploads.iter().map(|n| a(n).ok).sum();
    // A session's three steps are recorded on their own as well.
    let arrivals = r.requests() - a("ws_event").requests() - 3 * a("session").requests();
    assert!((135..=141).contains(&arrivals), "{arrivals}");
    assert_eq!(
        a("ws_event").ok,
        uploaded,
        "every upload's event on the subscriber"
    );
    // Every HTTP request the client made reached the server once (/metrics, /ws aside).
    let server = report.server_delta("http_requests_total:api");
    assert_eq!(server as u64, r.http_requests());
    // Files and bytes the client uploaded (REST, tus, gRPC) are what the server stored.
    let bytes: u64 = uploads.iter().map(|n| a(n).file_bytes).sum();
    assert_eq!(
        report.server_delta("picker_upload_bytes_total") as u64,
        bytes
    );
    assert_eq!(report.server_delta("picker_uploads_total") as u64, uploaded);
    // Half the tus uploads were cut off and resumed from what the server kept of the
    // broken PATCH: no byte was sent twice.
    let t = a("tus_upload");
    assert!(t.resumes > 0);
    assert_eq!(t.bytes_sent, t.file_bytes);
    // Dedup-aware gRPC: half the content repeats the user's pool, so much less is sent —
    // and what was sent is what the server received.
    let g = a("grpc_upload");
    assert!(
        g.bytes_sent * 10 < g.file_bytes * 8,
        "{} of {}",
        g.bytes_sent,
        g.file_bytes
    );
    assert_eq!(
        report.server_delta("picker_grpc_upload_bytes_received_total") as u64,
        g.bytes_sent
    );
    assert!(a("grpc_download").bytes_received > 0);
    assert!(a("transform").bytes_received > 0);
    assert!(a("register").ok > 0 && a("session").ok > 0);
    // The server's own cost and the store's totals, taken after the load.
    assert!(report.server_delta("process_cpu_seconds_total") > 0.0);
    assert!(report.server_after["process_resident_memory_bytes"] > (10 << 20) as f64);
    assert!(report.server_after["engine_dedup_ratio"] > 1.0);
    assert!(report.server_after["engine_logical_bytes"] >= bytes as f64);
    let v = report.json(s.slo.as_ref());
    assert_eq!(v["client"]["requests"], r.requests());
    assert!(v["client"]["timeline"].as_array().unwrap().len() >= 4);
    // Per service: what the one process spent, and the calls it handled (HTTP and gRPC).
    let costs = report.service_costs();
    assert_eq!(costs.len(), 1);
    let (name, cpu, _, rss, calls) = &costs[0];
    assert_eq!(name, "serve");
    assert!(*cpu > 0.0 && *rss > 0.0);
    assert!(*calls >= server, "{calls} calls, {server} API requests");
    // Charts.
    let dir = tempfile::tempdir().unwrap();
    let charts = fms_loadtest::chart::write(&report, dir.path()).unwrap();
    assert_eq!(charts.len(), 2);
    for c in charts {
        let svg = std::fs::read_to_string(&c).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{}",
            c.display()
        );
    }
}

/// Steps of 20, 40, 60 arrivals/s, one second each, against an SLO no server can hold
/// (p99 under 1 µs): the search stops after the first step, which broke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_search_stops_at_the_first_broken_step() {
    let (_p, target) = serve();
    let text = r#"
name = "steps"
[users]
count = 2
[load]
mode = "open"
rate = 20
duration = "3s"
steps = { add = 20, every = "1s", until = 60, search = true }
[[actions]]
kind = "list"
weight = 1
[slo]
p99_ms = 0.001
error_rate = 0.01
"#;
    let s = Scenario::parse(text).unwrap();
    let report =
        fms_loadtest::run::run(&s, &target, false, Arc::new(AtomicBool::new(false)), |_| {})
            .await
            .unwrap();
    eprintln!("{}", report.markdown(s.slo.as_ref()));
    let c = report.capacity.as_ref().unwrap();
    assert_eq!(c.held, None);
    let (rate, why) = c.broke.as_ref().unwrap();
    assert_eq!(*rate, 20.0);
    assert!(why.contains("list p99"), "{why}");
    assert!(!c.saturated.is_empty());
    assert_eq!(report.steps.len(), 1);
    // Stopped: far fewer than the 120 arrivals of the whole profile.
    assert!(
        report.recorder.requests() < 80,
        "{}",
        report.recorder.requests()
    );
    // And with an SLO that holds, every step is judged and none broke.
    let s = Scenario::parse(&text.replace("p99_ms = 0.001", "p99_ms = 5000")).unwrap();
    let report =
        fms_loadtest::run::run(&s, &target, false, Arc::new(AtomicBool::new(false)), |_| {})
            .await
            .unwrap();
    let c = report.capacity.as_ref().unwrap();
    assert_eq!(report.steps.len(), 3, "{:#}", report.json(None));
    assert_eq!((c.held, c.broke.as_ref()), (Some(60.0), None));
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        fms_loadtest::chart::write(&report, dir.path())
            .unwrap()
            .len(),
        4
    );
}

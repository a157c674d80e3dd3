//! Issue 10 (first part): the `smoke` scenario of `fms-loadtest` against `fms serve`; the
//! report's counts agree with the server's own metrics.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::*;
use fms_loadtest::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_counts_match_the_server() {
    let p = spawn(&["serve"], &[], true);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../loadtest/scenarios/smoke.toml"
    ))
    .unwrap();
    let s = Scenario::parse(&text).unwrap();
    let report =
        fms_loadtest::run::run(&s, &p.http, Arc::new(AtomicBool::new(false)), |_, _, _| {})
            .await
            .unwrap();
    let r = &report.recorder;
    eprintln!("{}", report.markdown(s.slo.as_ref()));
    // 4 s at 40/s with a 1 s ramp: 140 arrivals.
    assert!((135..=141).contains(&r.requests()), "{}", r.requests());
    assert_eq!(r.errors(), 0, "{:?}", report.json(None));
    // Every request the client made reached the server once (its /metrics reads aside).
    let server = report.server_delta("http_requests_total:api");
    assert_eq!(server as u64, r.requests());
    // Bytes the client uploaded are the bytes the server stored.
    let up: u64 = r.actions.get("upload").map_or(0, |a| a.bytes_sent);
    assert!(up > 0);
    assert_eq!(report.server_delta("picker_upload_bytes_total") as u64, up);
    let uploads = r.actions.get("upload").map_or(0, |a| a.ok);
    assert_eq!(report.server_delta("picker_uploads_total") as u64, uploads);
    // The server's own cost: CPU time spent, memory held.
    assert!(report.server_delta("process_cpu_seconds_total") > 0.0);
    assert!(report.server_after["process_resident_memory_bytes"] > (10 << 20) as f64);
    let v = report.json(s.slo.as_ref());
    assert_eq!(v["client"]["requests"], r.requests());
    assert!(v["client"]["timeline"].as_array().unwrap().len() >= 4);
}

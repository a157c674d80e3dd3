//! The process-wide Prometheus recorder. Metric names follow Prometheus conventions
//! (`_total` counters, `_seconds` histograms); every series carries a `service` label.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Install the recorder (once per process; later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .ok()?;
        match builder.install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

/// This process's CPU time (user + system) and resident memory, from `/proc/self` (Linux;
/// nothing elsewhere): read at each scrape so load tests and dashboards see the server's
/// own cost.
fn record_process() {
    // Times in /proc are in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS_PER_SECOND: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        // Fields after the command name (which may hold spaces) start after its ')'.
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name.
        if let (Some(u), Some(s)) = (
            fields.get(11).and_then(|v| v.parse::<f64>().ok()),
            fields.get(12).and_then(|v| v.parse::<f64>().ok()),
        ) {
            metrics::gauge!("process_cpu_seconds_total").set((u + s) / TICKS_PER_SECOND);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set(kib * 1024.0);
    }
    // The CPUs this process may run on (affinity and cgroup quota included): what CPU
    // seconds per second are measured against.
    if let Ok(n) = std::thread::available_parallelism() {
        metrics::gauge!("process_cpus").set(n.get() as f64);
    }
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install();
    record_process();
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

//! The report: JSON for machines, Markdown for people; the server's own counters beside the
//! client's, and the SLO verdict.

use serde_json::{Value, json};

use crate::run::Report;
use crate::scenario::Slo;

/// Server counters the report shows (their increase over the run).
const SERVER: &[(&str, &str)] = &[
    ("http_requests_total:api", "API requests seen by the server"),
    ("picker_uploads_total", "files stored"),
    ("picker_upload_bytes_total", "bytes uploaded"),
    ("picker_download_bytes_total", "bytes served"),
    (
        "process_cpu_seconds_total",
        "server CPU seconds (the process serving the target)",
    ),
];

impl Report {
    /// A server counter's increase over the run.
    pub fn server_delta(&self, name: &str) -> f64 {
        self.server_after.get(name).copied().unwrap_or(0.0)
            - self.server_before.get(name).copied().unwrap_or(0.0)
    }

    /// Whether every action met `slo`, and if not, why.
    pub fn slo_verdict(&self, slo: &Slo) -> Result<(), String> {
        let (n, e) = (self.recorder.requests(), self.recorder.errors());
        let rate = if n == 0 { 0.0 } else { e as f64 / n as f64 };
        if rate > slo.error_rate {
            return Err(format!("error rate {rate:.4} > {}", slo.error_rate));
        }
        for (name, a) in &self.recorder.actions {
            let p99 = a.latency.value_at_quantile(0.99) as f64 / 1000.0;
            if p99 > slo.p99_ms {
                return Err(format!("{name} p99 {p99:.1} ms > {} ms", slo.p99_ms));
            }
        }
        Ok(())
    }

    pub fn json(&self, slo: Option<&Slo>) -> Value {
        let server: serde_json::Map<String, Value> = SERVER
            .iter()
            .map(|(k, _)| (k.to_string(), json!(self.server_delta(k))))
            .collect();
        let mut server = server;
        if let Some(rss) = self.server_after.get("process_resident_memory_bytes") {
            server.insert("resident_memory_bytes_after".into(), json!(rss));
        }
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "interrupted": self.interrupted,
            "client": self.recorder.json(self.elapsed),
            "server": server,
        });
        if let Some(slo) = slo {
            v["slo"] = match self.slo_verdict(slo) {
                Ok(()) => json!({"held": true}),
                Err(why) => json!({"held": false, "broken_by": why}),
            };
        }
        v
    }

    pub fn markdown(&self, slo: Option<&Slo>) -> String {
        let j = self.recorder.json(self.elapsed);
        let mut out = format!(
            "# Load test: {}\n\nTarget `{}`, {:.1} s{}. {} requests ({:.1}/s), {} errors.\n\n",
            self.scenario,
            self.target,
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (interrupted: partial)"
            } else {
                ""
            },
            self.recorder.requests(),
            j["requests_per_s"].as_f64().unwrap_or(0.0),
            self.recorder.errors(),
        );
        out.push_str("| action | requests | errors | req/s | MB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        if let Some(actions) = j["actions"].as_object() {
            for (name, a) in actions {
                let l = &a["latency_ms"];
                let errors: u64 = a["errors"]
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                out.push_str(&format!(
                    "| {name} | {} | {errors} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                    a["requests"],
                    a["requests_per_s"].as_f64().unwrap_or(0.0),
                    a["mb_per_s"].as_f64().unwrap_or(0.0),
                    l["p50"].as_f64().unwrap_or(0.0),
                    l["p90"].as_f64().unwrap_or(0.0),
                    l["p99"].as_f64().unwrap_or(0.0),
                    l["p99.9"].as_f64().unwrap_or(0.0),
                    l["max"].as_f64().unwrap_or(0.0),
                ));
            }
        }
        out.push_str("\nServer (`/metrics`, increase over the run):\n\n");
        for (k, what) in SERVER {
            out.push_str(&format!("- {what}: {}\n", self.server_delta(k)));
        }
        if let Some(rss) = self.server_after.get("process_resident_memory_bytes") {
            out.push_str(&format!(
                "- server resident memory after the run: {:.0} MiB\n",
                rss / (1 << 20) as f64
            ));
        }
        if let Some(slo) = slo {
            out.push_str(&match self.slo_verdict(slo) {
                Ok(()) => format!(
                    "\nSLO (p99 < {} ms, error rate < {}): **held**.\n",
                    slo.p99_ms, slo.error_rate
                ),
                Err(why) => format!("\nSLO: **broken** ({why}).\n"),
            });
        }
        out
    }
}

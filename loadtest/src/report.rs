//! The report: JSON for machines, Markdown for people; the server's own counters beside the
//! client's, each step of a step profile, the capacity found, and the SLO verdict.

use serde_json::{Value, json};

use crate::run::{Report, judge, utilisation};
use crate::scenario::Slo;
use crate::stats::merged;

/// Server counters the report shows (their increase over the run).
const SERVER: &[(&str, &str)] = &[
    ("http_requests_total:api", "API requests seen by the server"),
    ("picker_uploads_total", "files stored"),
    ("picker_upload_bytes_total", "bytes uploaded"),
    ("picker_download_bytes_total", "bytes served"),
    (
        "picker_grpc_upload_bytes_received_total",
        "bytes received by gRPC uploads (after dedup)",
    ),
    ("notification_events_stored_total", "events stored"),
    (
        "process_cpu_seconds_total",
        "server CPU seconds (the process serving the target)",
    ),
];

/// Server gauges shown as they are after the run.
const GAUGES: &[(&str, &str)] = &[
    ("engine_files", "files in the store"),
    (
        "engine_logical_bytes",
        "logical bytes in the store (sum of file sizes)",
    ),
    ("engine_stored_bytes", "bytes on disk (pack files)"),
    (
        "engine_dedup_ratio",
        "dedup ratio (logical / unique chunk bytes)",
    ),
    ("notification_sockets", "WebSocket sockets open"),
];

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Report {
    /// A server counter's increase over the run.
    pub fn server_delta(&self, name: &str) -> f64 {
        self.server_after.get(name).copied().unwrap_or(0.0)
            - self.server_before.get(name).copied().unwrap_or(0.0)
    }

    /// Whether the whole run met `slo`, and if not, why.
    pub fn slo_verdict(&self, slo: &Slo) -> Result<(), String> {
        judge(&self.recorder.actions, 0, slo)
    }

    /// The server's CPU use over the run as a share of its CPUs.
    pub fn server_cpu_share(&self) -> f64 {
        let cpus = self
            .server_after
            .get("process_cpus")
            .copied()
            .unwrap_or(1.0)
            .max(1.0);
        self.server_delta("process_cpu_seconds_total") / self.elapsed.as_secs_f64().max(1e-9) / cpus
    }

    /// What each `--metrics` service spent: (name, CPU seconds, share of its CPUs, resident
    /// memory after, HTTP requests + gRPC calls it handled).
    pub fn service_costs(&self) -> Vec<(String, f64, f64, f64, f64)> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.services
            .iter()
            .map(|(name, b, a)| {
                let d =
                    |k: &str| a.get(k).copied().unwrap_or(0.0) - b.get(k).copied().unwrap_or(0.0);
                let cpu = d("process_cpu_seconds_total");
                let cpus = a.get("process_cpus").copied().unwrap_or(1.0).max(1.0);
                let rss = a
                    .get("process_resident_memory_bytes")
                    .copied()
                    .unwrap_or(0.0);
                let calls = d("http_requests_total") + d("grpc_server_handled_total");
                (name.clone(), cpu, cpu / secs / cpus, rss, calls)
            })
            .collect()
    }

    fn steps_json(&self) -> Vec<Value> {
        self.steps
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let empty = Default::default();
                let actions = self.recorder.steps.get(k).unwrap_or(&empty);
                let h = merged(actions);
                let n = h.len();
                let errors: u64 = actions.values().map(|a| a.error_count()).sum();
                let (server, client, _) = utilisation(st, self.client_cpus);
                let secs = (st.to - st.from).as_secs_f64().max(1e-9);
                json!({
                    "rate": st.rate,
                    "from_s": st.from.as_secs_f64(),
                    "to_s": st.to.as_secs_f64(),
                    "requests": n,
                    "achieved_per_s": n as f64 / secs,
                    "errors": errors,
                    "unanswered": st.unanswered,
                    "latency_ms": {"p50": ms(&h, 0.5), "p90": ms(&h, 0.9), "p99": ms(&h, 0.99),
                                   "max": h.max() as f64 / 1000.0},
                    "server_cpu_share": server,
                    "client_cpu_share": client,
                    "server_rss_bytes": st.server_after.get("process_resident_memory_bytes"),
                    "slo": match &st.verdict {
                        None => Value::Null,
                        Some(Ok(())) => json!({"held": true}),
                        Some(Err(why)) => json!({"held": false, "broken_by": why}),
                    },
                })
            })
            .collect()
    }

    pub fn json(&self, slo: Option<&Slo>) -> Value {
        let mut server: serde_json::Map<String, Value> = SERVER
            .iter()
            .map(|(k, _)| (k.to_string(), json!(self.server_delta(k))))
            .collect();
        for (k, _) in GAUGES {
            if let Some(v) = self.server_after.get(*k) {
                server.insert(format!("{k}_after"), json!(v));
            }
        }
        if let Some(rss) = self.server_after.get("process_resident_memory_bytes") {
            server.insert("resident_memory_bytes_after".into(), json!(rss));
        }
        server.insert("cpu_share".into(), json!(self.server_cpu_share()));
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "interrupted": self.interrupted,
            "client": self.recorder.json(self.elapsed),
            "client_cpu_seconds": self.client_cpu,
            "client_cpus": self.client_cpus,
            "http_requests": self.recorder.http_requests(),
            "ws_connects": self.ws_connects,
            "server": server,
        });
        if !self.steps.is_empty() {
            v["steps"] = json!(self.steps_json());
        }
        if !self.services.is_empty() {
            v["services"] = self
                .service_costs()
                .into_iter()
                .map(|(name, cpu, share, rss, calls)| {
                    (
                        name,
                        json!({"cpu_seconds": cpu, "cpu_share": share,
                                  "resident_memory_bytes_after": rss, "calls": calls}),
                    )
                })
                .collect::<serde_json::Map<String, Value>>()
                .into();
        }
        if let Some(c) = &self.capacity {
            v["capacity"] = json!({
                "held_rate": c.held,
                "broke_at": c.broke.as_ref().map(|(r, why)| json!({"rate": r, "why": why})),
                "saturated": c.saturated,
            });
        }
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
        let mut notes = Vec::new();
        for (name, a) in &self.recorder.actions {
            let secs = self.elapsed.as_secs_f64().max(1e-9);
            let l = &a.latency;
            out.push_str(&format!(
                "| {name} | {} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                a.requests(),
                a.error_count(),
                a.requests() as f64 / secs,
                (a.bytes_sent + a.bytes_received) as f64 / secs / 1e6,
                ms(l, 0.5),
                ms(l, 0.9),
                ms(l, 0.99),
                ms(l, 0.999),
                l.max() as f64 / 1000.0,
            ));
            if !a.errors.is_empty() {
                let kinds: Vec<String> = a.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                notes.push(format!("- {name} errors: {}", kinds.join(", ")));
            }
            if a.resumes > 0 {
                notes.push(format!(
                    "- {name}: {} interrupted transfers resumed",
                    a.resumes
                ));
            }
            if a.file_bytes > a.bytes_sent && a.bytes_sent > 0 {
                notes.push(format!(
                    "- {name}: {:.1} MB of files sent as {:.1} MB ({:.0}% skipped by dedup)",
                    a.file_bytes as f64 / 1e6,
                    a.bytes_sent as f64 / 1e6,
                    100.0 * (1.0 - a.bytes_sent as f64 / a.file_bytes as f64)
                ));
            }
        }
        if !notes.is_empty() {
            out.push('\n');
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        if !self.steps.is_empty() {
            out.push_str("\nSteps:\n\n| offered /s | achieved /s | errors | p50 ms | p99 ms | server CPU | client CPU | SLO |\n|---:|---:|---:|---:|---:|---:|---:|---|\n");
            for s in self.steps_json() {
                let l = &s["latency_ms"];
                out.push_str(&format!(
                    "| {:.0} | {:.1} | {} | {:.1} | {:.1} | {:.0}% | {:.0}% | {} |\n",
                    s["rate"].as_f64().unwrap_or(0.0),
                    s["achieved_per_s"].as_f64().unwrap_or(0.0),
                    s["errors"],
                    l["p50"].as_f64().unwrap_or(0.0),
                    l["p99"].as_f64().unwrap_or(0.0),
                    100.0 * s["server_cpu_share"].as_f64().unwrap_or(0.0),
                    100.0 * s["client_cpu_share"].as_f64().unwrap_or(0.0),
                    match s["slo"]["held"].as_bool() {
                        Some(true) => "held".to_string(),
                        Some(false) =>
                            format!("broken: {}", s["slo"]["broken_by"].as_str().unwrap_or("")),
                        None => "-".to_string(),
                    }
                ));
            }
        }
        if let Some(c) = &self.capacity {
            out.push_str(&format!(
                "\nCapacity: **{}**{}. Saturated first: {}.\n",
                match c.held {
                    Some(r) => format!("{r:.0} arrivals/s held the SLO"),
                    None => "no step held the SLO".to_string(),
                },
                match &c.broke {
                    Some((r, why)) => format!("; {r:.0}/s broke it ({why})"),
                    None => "; no step broke it (raise load.steps.until)".to_string(),
                },
                c.saturated
            ));
        }
        out.push_str("\nServer (`/metrics`, increase over the run):\n\n");
        for (k, what) in SERVER {
            out.push_str(&format!("- {what}: {}\n", self.server_delta(k)));
        }
        out.push_str(&format!(
            "- server CPU: {:.0}% of its {} cores; the load generator's: {:.0}% of {}\n",
            100.0 * self.server_cpu_share(),
            self.server_after
                .get("process_cpus")
                .copied()
                .unwrap_or(0.0),
            100.0 * self.client_cpu / self.elapsed.as_secs_f64().max(1e-9) / self.client_cpus,
            self.client_cpus
        ));
        if let Some(rss) = self.server_after.get("process_resident_memory_bytes") {
            out.push_str(&format!(
                "- server resident memory after the run: {:.0} MiB\n",
                rss / (1 << 20) as f64
            ));
        }
        let costs = self.service_costs();
        if !costs.is_empty() {
            out.push_str("\nPer service (`--metrics`):\n\n| service | CPU s | CPU share | memory after MiB | requests + gRPC calls | CPU ms per call |\n|---|---:|---:|---:|---:|---:|\n");
            for (name, cpu, share, rss, calls) in costs {
                out.push_str(&format!(
                    "| {name} | {cpu:.2} | {:.0}% | {:.0} | {calls:.0} | {:.2} |\n",
                    share * 100.0,
                    rss / (1 << 20) as f64,
                    if calls > 0.0 {
                        cpu * 1000.0 / calls
                    } else {
                        0.0
                    },
                ));
            }
            out.push('\n');
        }
        for (k, what) in GAUGES {
            if let Some(v) = self.server_after.get(*k) {
                out.push_str(&format!("- {what}: {v}\n"));
            }
        }
        if let Some(slo) = slo {
            out.push_str(&match self.slo_verdict(slo) {
                Ok(()) => format!(
                    "\nSLO (p99 < {} ms{}, error rate < {}) over the whole run{}: **held**.\n",
                    slo.p99_ms,
                    slo.p99_ms_for
                        .iter()
                        .map(|(a, ms)| format!("; {a} < {ms} ms"))
                        .collect::<String>(),
                    slo.error_rate,
                    if self.steps.is_empty() {
                        ""
                    } else {
                        " (all steps together)"
                    }
                ),
                Err(why) => format!(
                    "\nSLO over the whole run{}: **broken** ({why}).\n",
                    if self.steps.is_empty() {
                        ""
                    } else {
                        " (all steps together)"
                    }
                ),
            });
        }
        out
    }
}

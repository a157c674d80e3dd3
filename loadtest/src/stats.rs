//! What a run measured: per action an HDR histogram of latencies (microseconds, 1 µs to 10
//! minutes, 3 significant digits), counts, bytes and errors by kind; and per second the
//! requests completed and their p99, for the progress line and the charts.
//!
//! A latency is `done - due`: from when the request was *meant* to start. In an open-loop
//! run a server stall delays every request due during it, and each of them carries the
//! delay — the stall shows in the percentiles instead of vanishing (coordinated omission).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        // Fixed, valid bounds: cannot fail.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// One action's numbers.
#[derive(Debug)]
pub struct ActionStats {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Bytes on the wire (bodies, gRPC payloads).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Size of the files uploaded (more than `bytes_sent` when dedup skipped chunks).
    pub file_bytes: u64,
    /// HTTP requests made (a tus upload makes several; gRPC calls are not counted here).
    pub http_requests: u64,
    /// Interrupted transfers resumed.
    pub resumes: u64,
}

impl Default for ActionStats {
    fn default() -> Self {
        ActionStats {
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            file_bytes: 0,
            http_requests: 0,
            resumes: 0,
        }
    }
}

impl ActionStats {
    pub fn requests(&self) -> u64 {
        self.latency.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// How one request went.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `None`: success; else the kind of error (`http_503`, `timeout`, `connect`, ...).
    pub error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub file_bytes: u64,
    pub http_requests: u32,
    pub resumes: u32,
}

/// One second of a run (by completion time).
#[derive(Debug)]
pub struct Second {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
}

/// Everything measured in a run.
#[derive(Debug, Default)]
pub struct Recorder {
    pub actions: BTreeMap<&'static str, ActionStats>,
    /// Per second since the start (by completion).
    pub seconds: Vec<Second>,
    /// With a step profile: each step's numbers (by when requests were due), and how long
    /// a step lasts.
    pub steps: Vec<BTreeMap<&'static str, ActionStats>>,
    pub step_every: Option<Duration>,
    /// With steps: requests issued per step (those not recorded yet are in flight).
    pub issued: Vec<u64>,
}

impl Recorder {
    /// A recorder that also keeps each step of `every` apart.
    pub fn with_steps(every: Duration) -> Recorder {
        Recorder {
            step_every: Some(every),
            ..Recorder::default()
        }
    }

    /// Record a request due at `due` and finished at `done` (both since the run's start).
    pub fn record(&mut self, action: &'static str, due: Duration, done: Duration, o: &Outcome) {
        let micros = done.saturating_sub(due).as_micros().clamp(1, 600_000_000) as u64;
        add(self.actions.entry(action).or_default(), micros, o);
        if let Some(every) = self.step_every {
            let k = (due.as_secs_f64() / every.as_secs_f64()) as usize;
            while self.steps.len() <= k {
                self.steps.push(BTreeMap::new());
            }
            add(self.steps[k].entry(action).or_default(), micros, o);
        }
        let second = done.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(Second {
                requests: 0,
                errors: 0,
                bytes: 0,
                latency: histogram(),
            });
        }
        let s = &mut self.seconds[second];
        s.requests += 1;
        s.bytes += o.bytes_sent + o.bytes_received;
        let _ = s.latency.record(micros);
        if o.error.is_some() {
            s.errors += 1;
        }
    }

    /// A request due at `due` was issued (counted per step).
    pub fn issue(&mut self, due: Duration) {
        if let Some(every) = self.step_every {
            let k = (due.as_secs_f64() / every.as_secs_f64()) as usize;
            if self.issued.len() <= k {
                self.issued.resize(k + 1, 0);
            }
            self.issued[k] += 1;
        }
    }

    /// HTTP requests made, over all actions.
    pub fn http_requests(&self) -> u64 {
        self.actions.values().map(|a| a.http_requests).sum()
    }

    pub fn requests(&self) -> u64 {
        self.actions.values().map(ActionStats::requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.actions.values().map(ActionStats::error_count).sum()
    }

    /// The numbers as JSON (latencies in milliseconds), over `elapsed`.
    pub fn json(&self, elapsed: Duration) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let actions: serde_json::Map<String, Value> = self
            .actions
            .iter()
            .map(|(name, a)| {
                let n = a.latency.len();
                (
                    name.to_string(),
                    json!({
                        "requests": n,
                        "ok": a.ok,
                        "errors": a.errors,
                        "requests_per_s": n as f64 / secs,
                        "mb_per_s": (a.bytes_sent + a.bytes_received) as f64 / secs / 1e6,
                        "bytes_sent": a.bytes_sent,
                        "bytes_received": a.bytes_received,
                        "file_bytes": a.file_bytes,
                        "http_requests": a.http_requests,
                        "resumes": a.resumes,
                        "latency_ms": {
                            "p50": ms(&a.latency, 0.5), "p90": ms(&a.latency, 0.9),
                            "p99": ms(&a.latency, 0.99), "p99.9": ms(&a.latency, 0.999),
                            "max": a.latency.max() as f64 / 1000.0,
                        },
                    }),
                )
            })
            .collect();
        let timeline: Vec<Value> = self
            .seconds
            .iter()
            .enumerate()
            .map(|(t, s)| {
                let q = |q: f64| {
                    if s.requests > 0 {
                        ms(&s.latency, q)
                    } else {
                        0.0
                    }
                };
                json!({"second": t, "requests": s.requests, "errors": s.errors,
                       "mb": s.bytes as f64 / 1e6, "p50_ms": q(0.5), "p99_ms": q(0.99)})
            })
            .collect();
        json!({
            "elapsed_s": secs,
            "requests": self.requests(),
            "errors": self.errors(),
            "requests_per_s": self.requests() as f64 / secs,
            "actions": actions,
            "timeline": timeline,
        })
    }
}

fn add(a: &mut ActionStats, micros: u64, o: &Outcome) {
    let _ = a.latency.record(micros);
    a.bytes_sent += o.bytes_sent;
    a.bytes_received += o.bytes_received;
    a.file_bytes += o.file_bytes;
    a.http_requests += u64::from(o.http_requests);
    a.resumes += u64::from(o.resumes);
    match &o.error {
        None => a.ok += 1,
        Some(kind) => *a.errors.entry(kind.clone()).or_default() += 1,
    }
}

/// All actions' latencies of a step (or run) together.
pub fn merged(actions: &BTreeMap<&'static str, ActionStats>) -> Histogram<u64> {
    let mut h = histogram();
    for a in actions.values() {
        let _ = h.add(&a.latency);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome {
            bytes_received: 10,
            ..Outcome::default()
        }
    }

    /// A fake clock: requests due every 10 ms for 4 s, a server that answers in 1 ms one
    /// at a time — and stalls for 1 s at t = 1 s. Measured from when each request was due,
    /// the stall shows: every request due during it waited, so > 1% of requests are over
    /// 500 ms and p99 is near the stall. Measured from when each was actually sent (what a
    /// closed-loop client that waits for the server does) it would vanish.
    #[test]
    fn an_injected_stall_shows_in_the_latencies() {
        let mut from_due = Recorder::default();
        let mut from_send = Recorder::default();
        let mut server_free = Duration::ZERO;
        let stall = (Duration::from_secs(1), Duration::from_secs(2));
        for i in 0..400u64 {
            let due = Duration::from_millis(10 * (i + 1));
            let mut start = due.max(server_free);
            if start >= stall.0 && start < stall.1 {
                start = stall.1;
            }
            let done = start + Duration::from_millis(1);
            server_free = done;
            from_due.record("get", due, done, &ok());
            from_send.record("get", start, done, &ok());
        }
        let p99 = from_due.actions["get"].latency.value_at_quantile(0.99);
        assert!(p99 >= 900_000, "p99 {p99} µs should carry the 1 s stall");
        let naive = from_send.actions["get"].latency.value_at_quantile(0.99);
        assert!(naive <= 1_100, "send-time p99 {naive} µs hides it");
        assert_eq!(from_due.requests(), 400);
        let v = from_due.json(Duration::from_secs(4));
        assert_eq!(v["requests"], 400);
        assert!(v["actions"]["get"]["latency_ms"]["max"].as_f64().unwrap() >= 999.0);
        // The stall's second shows in the timeline: nothing completed during it.
        assert_eq!(v["timeline"][1]["requests"], 0);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut r = Recorder::default();
        let e = |k: &str| Outcome {
            error: Some(k.into()),
            ..Outcome::default()
        };
        r.record("up", Duration::ZERO, Duration::from_millis(5), &ok());
        r.record(
            "up",
            Duration::ZERO,
            Duration::from_millis(5),
            &e("http_503"),
        );
        r.record(
            "up",
            Duration::ZERO,
            Duration::from_millis(5),
            &e("http_503"),
        );
        r.record(
            "up",
            Duration::ZERO,
            Duration::from_millis(5),
            &e("timeout"),
        );
        assert_eq!((r.requests(), r.errors()), (4, 3));
        assert_eq!(r.actions["up"].errors["http_503"], 2);
    }

    #[test]
    fn steps_are_kept_apart_by_due_time() {
        let mut r = Recorder::with_steps(Duration::from_secs(10));
        let ms = Duration::from_millis;
        r.record("get", ms(1_000), ms(1_005), &ok());
        r.record("get", ms(9_999), ms(10_500), &ok());
        r.record("get", ms(12_000), ms(12_300), &ok());
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[0]["get"].requests(), 2, "by when it was due");
        let max = merged(&r.steps[1]).max();
        assert!((299_000..=301_000).contains(&max), "{max}");
        assert_eq!(r.seconds[10].requests, 1, "the timeline is by completion");
    }
}

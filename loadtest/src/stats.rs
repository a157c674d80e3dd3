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
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Default for ActionStats {
    fn default() -> Self {
        ActionStats {
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// How one request went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `None`: success; else the kind of error (`http_503`, `timeout`, `connect`, ...).
    pub error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Everything measured in a run.
#[derive(Debug, Default)]
pub struct Recorder {
    pub actions: BTreeMap<&'static str, ActionStats>,
    /// Per second since the start: completed requests, errors, and their latencies.
    pub seconds: Vec<(u64, u64, Histogram<u64>)>,
}

impl Recorder {
    /// Record a request due at `due` and finished at `done` (both since the run's start).
    pub fn record(&mut self, action: &'static str, due: Duration, done: Duration, o: &Outcome) {
        let micros = done.saturating_sub(due).as_micros().clamp(1, 600_000_000) as u64;
        let a = self.actions.entry(action).or_default();
        let _ = a.latency.record(micros);
        a.bytes_sent += o.bytes_sent;
        a.bytes_received += o.bytes_received;
        let second = done.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push((0, 0, histogram()));
        }
        let s = &mut self.seconds[second];
        s.0 += 1;
        let _ = s.2.record(micros);
        match &o.error {
            None => a.ok += 1,
            Some(kind) => {
                *a.errors.entry(kind.clone()).or_default() += 1;
                s.1 += 1;
            }
        }
    }

    pub fn requests(&self) -> u64 {
        self.actions
            .values()
            .map(|a| a.ok + a.errors.values().sum::<u64>())
            .sum()
    }

    pub fn errors(&self) -> u64 {
        self.actions
            .values()
            .map(|a| a.errors.values().sum::<u64>())
            .sum()
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
            .map(|(t, (n, e, h))| {
                json!({"second": t, "requests": n, "errors": e,
                       "p99_ms": if *n > 0 { ms(h, 0.99) } else { 0.0 }})
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome {
            error: None,
            bytes_sent: 0,
            bytes_received: 10,
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
            bytes_sent: 0,
            bytes_received: 0,
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
}

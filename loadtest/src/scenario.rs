//! Scenario files (TOML): who, how much load, which actions in what mix, the SLO.
//!
//! ```toml
//! name = "smoke"
//! [users]
//! count = 4
//! [load]
//! mode = "open"          # arrivals at `rate` per second whatever the server does
//! rate = 40
//! ramp = "1s"            # 0 -> rate over this, then steady
//! duration = "4s"
//! max_requests = 2000
//! [[actions]]
//! kind = "upload"
//! weight = 2
//! size = { dist = "uniform", min = "1KiB", max = "64KiB" }
//! [[actions]]
//! kind = "download"
//! weight = 3
//! range = true
//! [slo]
//! p99_ms = 200
//! error_rate = 0.001
//! ```
//!
//! More: `[users] seed_size = "1KiB"` (each account's seed file), `subscribers = 2`
//! (WebSockets per account; adds the action `ws_event`); `[load] steps = { add = 50,
//! every = "20s", until = 2000, search = true }` (a step profile; `search`: the capacity
//! search), `mode = "closed"` with `virtual_users = 32`, `max_in_flight`; actions
//! `tus_upload` (`size`, `chunk`, `interrupt`), `share`, `transform` (`ops`, `{n}` varies
//! it), `import` (`url`), `grpc_upload` (`size`, `dedup_aware`, `duplicate`),
//! `grpc_download`; `[slo] p99_ms_for = { login = 1000 }` (an action's own bound). Every
//! field is described on its type below.
//!
//! Errors name the line and the field (`toml`'s own report for syntax, unknown fields and
//! types; `field: why` for values out of range).

use fms_platform::units::{ByteSize, Duration};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub users: Users,
    pub load: Load,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub slo: Option<Slo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// Accounts registered before the load starts (not measured).
    pub count: u32,
    /// Each account's seed file (uploaded at set-up, what downloads read).
    #[serde(default = "seed_size")]
    pub seed_size: ByteSize,
    /// WebSocket subscribers per account: each receives the account's events, and the
    /// delay from an upload's answer to its `file.uploaded` on every socket is measured.
    #[serde(default)]
    pub subscribers: u32,
}

fn seed_size() -> ByteSize {
    ByteSize(256 << 10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Arrivals on a schedule, whatever the server does: latency counts from the intended
    /// start (no coordinated omission).
    Open,
    /// `virtual_users` each doing one action after another.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub mode: Mode,
    /// Open: arrivals per second at the steady state.
    #[serde(default)]
    pub rate: f64,
    /// Closed: concurrent users.
    #[serde(default)]
    pub virtual_users: u32,
    /// Open: from 0 to `rate` over this, then steady.
    #[serde(default = "zero")]
    pub ramp: Duration,
    /// The whole run (ramp included).
    pub duration: Duration,
    /// Never more requests than this.
    #[serde(default = "max_requests")]
    pub max_requests: u64,
    /// Open: requests in flight at most; an arrival beyond is counted as an error
    /// (`client_saturated`) rather than delayed (which would hide latency).
    #[serde(default = "max_in_flight")]
    pub max_in_flight: u32,
    /// Open: a step profile instead of steady `rate` — `rate` first, `add` more every
    /// `every`, up to `until`; with `search` (or `--capacity`) the run stops at the first
    /// step that breaks the SLO and reports the last that held.
    #[serde(default)]
    pub steps: Option<Steps>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    /// Arrivals per second added at each step.
    pub add: f64,
    /// How long each step lasts.
    pub every: Duration,
    /// The last step's rate at most.
    pub until: f64,
    /// Capacity search: stop at the first step that breaks `[slo]`.
    #[serde(default)]
    pub search: bool,
}

fn zero() -> Duration {
    Duration(std::time::Duration::ZERO)
}

fn max_requests() -> u64 {
    1_000_000
}

fn max_in_flight() -> u32 {
    2_000
}

/// File sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Size {
    Fixed {
        size: ByteSize,
    },
    Uniform {
        min: ByteSize,
        max: ByteSize,
    },
    /// Log-normal around `median` with shape `sigma`, cut at `max`.
    LogNormal {
        median: ByteSize,
        sigma: f64,
        max: ByteSize,
    },
}

impl Size {
    /// A size for a uniform `u` in [0, 1) and a standard normal `z`.
    pub fn pick(&self, u: f64, z: f64) -> u64 {
        match self {
            Size::Fixed { size } => size.0,
            Size::Uniform { min, max } => min.0 + ((max.0 - min.0) as f64 * u) as u64,
            Size::LogNormal { median, sigma, max } => {
                ((median.0 as f64) * (sigma * z).exp()).min(max.0 as f64) as u64
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// `POST /api/upload` of new random bytes.
    Upload {
        #[serde(default = "one")]
        weight: u32,
        size: Size,
    },
    /// `GET /api/files/{id}/content` of one of the user's files (`range`: the first 64 KiB).
    Download {
        #[serde(default = "one")]
        weight: u32,
        #[serde(default)]
        range: bool,
    },
    /// `GET /api/files?limit=50`.
    List {
        #[serde(default = "one")]
        weight: u32,
    },
    /// `POST /auth/login`.
    Login {
        #[serde(default = "one")]
        weight: u32,
    },
    /// A tus 1.0 upload: create, then `PATCH`es of `chunk` bytes. With probability
    /// `interrupt` one `PATCH` is cut off part-way (the connection dropped, as on a phone);
    /// the client asks `HEAD` for the durable offset and resumes from there. Measured from
    /// the create to the last byte acknowledged.
    TusUpload {
        #[serde(default = "one")]
        weight: u32,
        size: Size,
        #[serde(default = "tus_chunk")]
        chunk: ByteSize,
        #[serde(default)]
        interrupt: f64,
    },
    /// `POST /api/files/share` of one of the user's files with another user of the
    /// population (read), then that user's `GET` of its record.
    Share {
        #[serde(default = "one")]
        weight: u32,
    },
    /// `GET /api/files/{id}/content?transform=ops` of the user's seed image (a 1024x768
    /// PNG uploaded at set-up). `{n}` in `ops` is replaced by a number from 100 to 163 at
    /// each request: results that mostly miss the cache; without it the same result, which
    /// hits it after the first request.
    Transform {
        #[serde(default = "one")]
        weight: u32,
        ops: String,
    },
    /// `POST /api/files/download {"url"}` and the job followed until it ends (polled every
    /// 50 ms). The *server* fetches `url` (it must allow that address: `downloader.allow`);
    /// this harness contacts only the target.
    Import {
        #[serde(default = "one")]
        weight: u32,
        url: String,
    },
    /// gRPC `FilesService/Upload` (the bulk API). `dedup_aware`: chunks announced and only
    /// the asked-for ones sent; `duplicate`: the share of the content that repeats what the
    /// user uploaded at set-up (backups, re-uploads). One stream per request.
    GrpcUpload {
        #[serde(default = "one")]
        weight: u32,
        size: Size,
        #[serde(default = "yes")]
        dedup_aware: bool,
        #[serde(default)]
        duplicate: f64,
    },
    /// `POST /auth/register` of a new account (not part of the population).
    Register {
        #[serde(default = "one")]
        weight: u32,
    },
    /// A user's visit: `steps` (actions, without weights) one after another as the same
    /// user, stopping at the first error. Arrivals are sessions per second; the session is
    /// timed from when it was due to its last step's end, each step on its own as well.
    Session {
        #[serde(default = "one")]
        weight: u32,
        steps: Vec<Action>,
    },
    /// gRPC `FilesService/Download` of one of the user's files, whole.
    GrpcDownload {
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

fn tus_chunk() -> ByteSize {
    ByteSize(1 << 20)
}

fn yes() -> bool {
    true
}

impl Action {
    pub fn weight(&self) -> u32 {
        match self {
            Action::Upload { weight, .. }
            | Action::Download { weight, .. }
            | Action::List { weight }
            | Action::Login { weight }
            | Action::TusUpload { weight, .. }
            | Action::Share { weight }
            | Action::Transform { weight, .. }
            | Action::Import { weight, .. }
            | Action::GrpcUpload { weight, .. }
            | Action::GrpcDownload { weight }
            | Action::Register { weight }
            | Action::Session { weight, .. } => *weight,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::Upload { .. } => "upload",
            Action::Download { range: false, .. } => "download",
            Action::Download { range: true, .. } => "download_range",
            Action::List { .. } => "list",
            Action::Login { .. } => "login",
            Action::TusUpload { .. } => "tus_upload",
            Action::Share { .. } => "share",
            Action::Transform { ops, .. } if ops.contains("{n}") => "transform_varied",
            Action::Transform { .. } => "transform",
            Action::Import { .. } => "import",
            Action::GrpcUpload { .. } => "grpc_upload",
            Action::GrpcDownload { .. } => "grpc_download",
            Action::Register { .. } => "register",
            Action::Session { .. } => "session",
        }
    }

    /// Whether it needs the gRPC address.
    pub fn grpc(&self) -> bool {
        match self {
            Action::Session { steps, .. } => steps.iter().any(Action::grpc),
            a => matches!(a, Action::GrpcUpload { .. } | Action::GrpcDownload { .. }),
        }
    }

    /// This action and, for a session, its steps.
    pub fn all(&self) -> Vec<&Action> {
        match self {
            Action::Session { steps, .. } => std::iter::once(self).chain(steps).collect(),
            a => vec![a],
        }
    }

    /// Whether it uploads a new file (each one a `file.uploaded` event).
    pub fn uploads(&self) -> bool {
        matches!(
            self,
            Action::Upload { .. } | Action::TusUpload { .. } | Action::GrpcUpload { .. }
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Every action's p99 under this many milliseconds...
    pub p99_ms: f64,
    /// ...except those named here (action name -> p99 in ms), e.g. `{ login = 1000 }`:
    /// a password hash is meant to be slow.
    #[serde(default)]
    pub p99_ms_for: std::collections::BTreeMap<String, f64>,
    /// Errors / requests under this.
    pub error_rate: f64,
}

impl Slo {
    /// The p99 bound of `action`.
    pub fn p99_for(&self, action: &str) -> f64 {
        self.p99_ms_for.get(action).copied().unwrap_or(self.p99_ms)
    }
}

impl Scenario {
    /// Parse and check a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        let bad = |field: &str, why: &str| Err(format!("{field}: {why}"));
        if self.users.count == 0 || self.users.count > 100_000 {
            return bad("users.count", "1 to 100000");
        }
        let l = &self.load;
        match l.mode {
            Mode::Open if !(l.rate > 0.0 && l.rate <= 1_000_000.0) => {
                return bad(
                    "load.rate",
                    "above 0 (arrivals per second) for mode = \"open\"",
                );
            }
            Mode::Closed if l.virtual_users == 0 || l.virtual_users > 100_000 => {
                return bad("load.virtual_users", "1 to 100000 for mode = \"closed\"");
            }
            _ => {}
        }
        if l.duration.0.is_zero() || l.duration.0 > std::time::Duration::from_secs(24 * 3600) {
            return bad("load.duration", "above 0s, at most 24h");
        }
        if l.ramp.0 > l.duration.0 {
            return bad("load.ramp", "at most load.duration");
        }
        if l.max_requests == 0 {
            return bad("load.max_requests", "above 0");
        }
        if l.max_in_flight == 0 {
            return bad("load.max_in_flight", "above 0");
        }
        if self.actions.is_empty() {
            return bad("actions", "at least one [[actions]]");
        }
        let each = self
            .actions
            .iter()
            .enumerate()
            .flat_map(|(i, top)| top.all().into_iter().map(move |a| (i, a)));
        for (i, a) in each {
            if a.weight() == 0 {
                return bad(&format!("actions[{i}].weight"), "above 0");
            }
            if let Action::Upload { size, .. }
            | Action::TusUpload { size, .. }
            | Action::GrpcUpload { size, .. } = a
            {
                let ok = match size {
                    Size::Fixed { .. } => true,
                    Size::Uniform { min, max } => min.0 <= max.0,
                    Size::LogNormal { median, sigma, max } => {
                        *sigma >= 0.0 && *sigma <= 10.0 && median.0 <= max.0
                    }
                };
                if !ok {
                    return bad(
                        &format!("actions[{i}].size"),
                        "min <= max, median <= max, 0 <= sigma <= 10",
                    );
                }
            }
        }
        if let Some(st) = &l.steps {
            if l.mode != Mode::Open {
                return bad("load.steps", "only with mode = \"open\"");
            }
            let ok = st.add > 0.0 && st.until >= l.rate && st.until <= 1_000_000.0;
            if !ok {
                return bad("load.steps", "add above 0, until at least load.rate");
            }
            if st.every.0.is_zero() || st.every.0 > l.duration.0 {
                return bad("load.steps.every", "above 0s, at most load.duration");
            }
            if st.search && self.slo.is_none() {
                return bad("load.steps.search", "needs an [slo] to search against");
            }
        }
        if self.users.subscribers > 64 {
            return bad("users.subscribers", "at most 64 sockets per user");
        }
        if self.users.seed_size.0 == 0 || self.users.seed_size.0 > 1 << 30 {
            return bad("users.seed_size", "1 byte to 1GiB");
        }
        for (i, top) in self.actions.iter().enumerate() {
            if let Action::Session { steps, .. } = top {
                if steps.is_empty() || steps.len() > 100 {
                    return bad(&format!("actions[{i}].steps"), "1 to 100 steps");
                }
                if steps.iter().any(|s| matches!(s, Action::Session { .. })) {
                    return bad(
                        &format!("actions[{i}].steps"),
                        "no session inside a session",
                    );
                }
            }
            for a in top.all() {
                let field = |f: &str| format!("actions[{i}].{f}");
                match a {
                    Action::TusUpload {
                        chunk, interrupt, ..
                    } => {
                        if chunk.0 == 0 || chunk.0 > 1 << 30 {
                            return bad(&field("chunk"), "1 byte to 1GiB");
                        }
                        if !(0.0..=1.0).contains(interrupt) {
                            return bad(&field("interrupt"), "a probability, 0 to 1");
                        }
                    }
                    Action::GrpcUpload { duplicate, .. } if !(0.0..=1.0).contains(duplicate) => {
                        return bad(&field("duplicate"), "a share, 0 to 1");
                    }
                    Action::Transform { ops, .. } if ops.trim().is_empty() => {
                        return bad(&field("ops"), "the operations, e.g. \"resize:w=320\"");
                    }
                    Action::Import { url, .. }
                        if !(url.starts_with("http://") || url.starts_with("https://")) =>
                    {
                        return bad(&field("url"), "an http:// or https:// URL");
                    }
                    _ => {}
                }
            }
        }
        if let Some(s) = &self.slo {
            if s.p99_ms <= 0.0 || !(0.0..=1.0).contains(&s.error_rate) {
                return bad("slo", "p99_ms above 0, error_rate between 0 and 1");
            }
            let known: Vec<&str> = self
                .actions
                .iter()
                .flat_map(Action::all)
                .map(Action::name)
                .collect();
            for (name, ms) in &s.p99_ms_for {
                if !known.contains(&name.as_str()) && name != crate::ws::ACTION {
                    return bad(
                        &format!("slo.p99_ms_for.{name}"),
                        &format!("not an action of this scenario ({})", known.join(", ")),
                    );
                }
                if *ms <= 0.0 {
                    return bad(&format!("slo.p99_ms_for.{name}"), "above 0");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[users]
count = 2
[load]
mode = "open"
rate = 10
duration = "2s"
[[actions]]
kind = "upload"
weight = 1
size = { dist = "log_normal", median = "64KiB", sigma = 1.0, max = "1MiB" }
[[actions]]
kind = "download"
weight = 2
range = true
"#;

    #[test]
    fn a_good_scenario_parses() {
        let s = Scenario::parse(GOOD).unwrap();
        assert_eq!(s.actions.len(), 2);
        assert_eq!(s.load.max_requests, 1_000_000);
        assert_eq!(s.actions[1].name(), "download_range");
        let Action::Upload { size, .. } = &s.actions[0] else {
            panic!()
        };
        assert_eq!(size.pick(0.5, 0.0), 64 << 10);
        assert_eq!(size.pick(0.5, 10.0), 1 << 20, "cut at max");
        assert_eq!(s.users.seed_size.0, 256 << 10);
        assert_eq!(s.users.subscribers, 0);
    }

    #[test]
    fn every_scenario_shipped_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 5);
    }

    #[test]
    fn bad_files_name_the_line_and_the_field() {
        // GOOD with one more action.
        let plus = |action: &str| {
            GOOD.replace(
                "range = true",
                &format!("range = true\n[[actions]]\n{action}"),
            )
        };
        for (text, says) in [
            (GOOD.replace("rate = 10", "rat = 10"), "line 7"),
            (GOOD.replace("rate = 10", "rat = 10"), "rat"),
            (GOOD.replace("count = 2", "count = \"two\""), "line 4"),
            (
                GOOD.replace("mode = \"open\"", "mode = \"sideways\""),
                "sideways",
            ),
            (
                GOOD.replace("kind = \"upload\"", "kind = \"explode\""),
                "explode",
            ),
            (GOOD.replace("rate = 10", "rate = 0"), "load.rate"),
            (
                GOOD.replace("weight = 2", "weight = 0"),
                "actions[1].weight",
            ),
            (
                GOOD.replace("duration = \"2s\"", "duration = \"2 parsecs\""),
                "line 8",
            ),
            (
                GOOD.replace("sigma = 1.0", "sigma = -1.0"),
                "actions[0].size",
            ),
            ("name = ".to_string(), "line 1"),
            (
                GOOD.replace(
                    "duration = \"2s\"",
                    "duration = \"2s\"\nsteps = { add = 5, every = \"1s\", until = 20, search = true }",
                ),
                "load.steps.search",
            ),
            (
                GOOD.replace("duration = \"2s\"", "duration = \"2s\"\nsteps = { add = 5 }"),
                "missing field `every`",
            ),
            (
                plus("kind = \"tus_upload\"\nweight = 1\nsize = { dist = \"fixed\", size = \"1MiB\" }\ninterrupt = 2.0"),
                "actions[2].interrupt",
            ),
            (
                plus("kind = \"grpc_upload\"\nweight = 1\nsize = { dist = \"fixed\", size = \"1MiB\" }\nduplicate = -1"),
                "actions[2].duplicate",
            ),
            (
                plus("kind = \"import\"\nweight = 1\nurl = \"ftp://x\""),
                "actions[2].url",
            ),
            (GOOD.replace("count = 2", "count = 2\nsubscribers = 100"), "users.subscribers"),
            (
                plus("kind = \"session\"\nsteps = [{ kind = \"session\", steps = [{ kind = \"list\" }] }]"),
                "no session inside a session",
            ),
            (
                plus("kind = \"session\"\nsteps = [{ kind = \"tus_upload\", size = { dist = \"fixed\", size = \"1KiB\" }, interrupt = 3 }]"),
                "actions[2].interrupt",
            ),
        ] {
            let e = Scenario::parse(&text).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}

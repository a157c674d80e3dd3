//! Named kill points for crash tests (cargo feature `testing`). With
//! `FMS_KILL_AT=<name>` (and optionally `FMS_KILL_AFTER=<n>`, default 1) in the environment,
//! the process aborts the n-th time it reaches that point — at exactly the moments the crash
//! guarantees are about. Without the feature every point compiles to nothing.

#[cfg(feature = "testing")]
pub(crate) fn hit(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let at = std::env::var("FMS_KILL_AT").ok()?;
        let after = std::env::var("FMS_KILL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Some((at, after))
    });
    if let Some((at, after)) = target
        && at == name
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *after
    {
        eprintln!("failpoint {name} hit");
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

/// Every kill point, for tests that want to reach them all.
pub const KILL_POINTS: &[&str] = &[
    "pack.after_append",
    "pack.after_sync",
    "index.after_commit",
    "session.before_commit",
    "gc.after_copy",
    "gc.after_switch",
    "gc.after_unlink",
];

//! Named kill points for crash tests (cargo feature `testing`), as in the engine: with
//! `FMS_KILL_AT=<name>` the process aborts when it reaches that point. Without the feature
//! every point compiles to nothing.

#[cfg(feature = "testing")]
pub(crate) fn hit(name: &str) {
    if std::env::var("FMS_KILL_AT").is_ok_and(|at| at == name) {
        eprintln!("failpoint {name} hit");
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

/// Every kill point of an upload, in order.
pub const KILL_POINTS: &[&str] = &[
    "picker.after_engine_commit",
    "picker.after_row",
    "picker.after_owner",
];

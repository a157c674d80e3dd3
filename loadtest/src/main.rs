//! `fms-loadtest SCENARIO --target URL`: run a scenario file against a running fms and print
//! a Markdown report (and write JSON). Only the given target is contacted; the run is bounded
//! by the scenario's duration and request cap; Ctrl-C stops it with a partial report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use fms_loadtest::scenario::Scenario;

#[derive(Debug, Parser)]
#[command(
    name = "fms-loadtest",
    about = "Load-test a running fms from a scenario file"
)]
struct Args {
    /// The scenario file (TOML), e.g. loadtest/scenarios/smoke.toml.
    scenario: PathBuf,
    /// The fms HTTP address, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: String,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here (it is printed either way).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let text = match std::fs::read_to_string(&args.scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fms-loadtest: {}: {e}", args.scenario.display());
            return ExitCode::from(2);
        }
    };
    let scenario = match Scenario::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fms-loadtest: {}: {e}", args.scenario.display());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fms-loadtest: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let result = rt.block_on(async {
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nfms-loadtest: stopping (Ctrl-C); the report covers what ran");
                on_signal.store(true, Ordering::Relaxed);
            }
        });
        fms_loadtest::run::run(&scenario, &args.target, stop.clone(), |t, n, e| {
            eprint!(
                "\r{:>6.1} s  {n} requests  {e} errors  {:.1}/s   ",
                t.as_secs_f64(),
                n as f64 / t.as_secs_f64().max(1e-9)
            );
        })
        .await
    });
    eprintln!();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fms-loadtest: {e}");
            return ExitCode::from(1);
        }
    };
    let md = report.markdown(scenario.slo.as_ref());
    println!("{md}");
    let write = |path: &Option<PathBuf>, body: String| -> Result<(), String> {
        match path {
            Some(p) => std::fs::write(p, body).map_err(|e| format!("{}: {e}", p.display())),
            None => Ok(()),
        }
    };
    let json = serde_json::to_string_pretty(&report.json(scenario.slo.as_ref()))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if let Err(e) = write(&args.json, json).and_then(|()| write(&args.markdown, md)) {
        eprintln!("fms-loadtest: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

//! `fms-loadtest SCENARIO --target URL [--grpc URL]`: run a scenario file against a running
//! fms, print a live progress line and at the end a Markdown report (and write JSON and
//! charts). Only the given addresses are contacted; the run is bounded by the scenario's
//! duration and request cap; Ctrl-C stops it with a partial report.

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
    /// The gRPC address, for scenarios with gRPC actions, e.g. http://127.0.0.1:9090.
    #[arg(long)]
    grpc: Option<String>,
    /// Search for the capacity: step the rate up (the scenario's [load.steps]) until the
    /// SLO breaks; report the highest rate that held and what saturated first.
    #[arg(long)]
    capacity: bool,
    /// Another `/metrics` to read before and after, as NAME=URL (repeatable): each service
    /// of a split deployment, e.g. --metrics picker=http://10.0.0.7:8080; the report shows
    /// what each spent (CPU, memory, calls).
    #[arg(long = "metrics", value_name = "NAME=URL", value_parser = name_url)]
    metrics: Vec<(String, String)>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here (it is printed either way).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn name_url(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, u))
            if !n.is_empty() && (u.starts_with("http://") || u.starts_with("https://")) =>
        {
            Ok((n.to_string(), u.to_string()))
        }
        _ => Err("NAME=http://host:port".into()),
    }
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
        let target = fms_loadtest::run::Target {
            http: args.target.clone(),
            grpc: args.grpc.clone(),
            metrics: args.metrics.clone(),
        };
        let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
        fms_loadtest::run::run(&scenario, &target, args.capacity, stop.clone(), move |p| {
            let step = p.step.map_or(String::new(), |(k, r)| {
                format!("step {k} ({r:.0}/s offered)  ")
            });
            let line = format!(
                "{:>6.1} s  {step}{:.0}/s  p99 {:.1} ms  {} requests  {} errors  {} in flight",
                p.elapsed.as_secs_f64(),
                p.rate,
                p.p99_ms,
                p.requests,
                p.errors,
                p.in_flight
            );
            // A terminal gets one line rewritten in place; a log gets a line every 10 s.
            if live {
                eprint!("\r{line}   ");
            } else if p.elapsed.as_secs() % 10 == 0 {
                eprintln!("{line}");
            }
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
    if let Some(dir) = &args.charts {
        match fms_loadtest::chart::write(&report, dir) {
            Ok(paths) => {
                for p in paths {
                    eprintln!("fms-loadtest: wrote {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("fms-loadtest: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

//! Charts of a run as SVG (`plotters`): latency over time, throughput over time, and with a
//! step profile the latency percentiles and achieved throughput per offered rate.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::run::Report;
use crate::stats::merged;

type Fallible<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("chart: {e}")
}

/// One line of a chart.
struct Line {
    label: &'static str,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

fn draw(path: &Path, title: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Fallible<()> {
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1e-3f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for l in lines {
        let colour = l.colour;
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(l.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Write the charts into `dir` (created if needed); their paths.
pub fn write(report: &Report, dir: &Path) -> Fallible<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let seconds = &report.recorder.seconds;
    let per_second = |f: &dyn Fn(&crate::stats::Second) -> f64| -> Vec<(f64, f64)> {
        seconds
            .iter()
            .enumerate()
            .filter(|(_, s)| s.requests > 0)
            .map(|(t, s)| (t as f64 + 0.5, f(s)))
            .collect()
    };
    let q = |s: &crate::stats::Second, q: f64| s.latency.value_at_quantile(q) as f64 / 1000.0;
    let name = &report.scenario;
    let path = dir.join("latency.svg");
    draw(
        &path,
        &format!("{name}: latency over time (by completion second)"),
        "seconds since the start",
        "milliseconds",
        &[
            Line {
                label: "p50",
                colour: BLUE,
                points: per_second(&|s| q(s, 0.5)),
            },
            Line {
                label: "p99",
                colour: RED,
                points: per_second(&|s| q(s, 0.99)),
            },
        ],
    )?;
    written.push(path);
    let path = dir.join("throughput.svg");
    draw(
        &path,
        &format!("{name}: throughput over time"),
        "seconds since the start",
        "per second",
        &[
            Line {
                label: "requests completed",
                colour: BLUE,
                points: per_second(&|s| s.requests as f64),
            },
            Line {
                label: "errors",
                colour: RED,
                points: per_second(&|s| s.errors as f64),
            },
            Line {
                label: "MB moved",
                colour: GREEN,
                points: per_second(&|s| s.bytes as f64 / 1e6),
            },
        ],
    )?;
    written.push(path);
    if !report.steps.is_empty() {
        let empty = Default::default();
        let step = |f: &dyn Fn(&hdrhistogram::Histogram<u64>, f64) -> f64| -> Vec<(f64, f64)> {
            report
                .steps
                .iter()
                .enumerate()
                .map(|(k, st)| {
                    let h = merged(report.recorder.steps.get(k).unwrap_or(&empty));
                    (st.rate, f(&h, (st.to - st.from).as_secs_f64().max(1e-9)))
                })
                .collect()
        };
        let p = |qv: f64| {
            move |h: &hdrhistogram::Histogram<u64>, _: f64| h.value_at_quantile(qv) as f64 / 1000.0
        };
        let path = dir.join("steps.svg");
        draw(
            &path,
            &format!("{name}: latency per step"),
            "offered arrivals per second",
            "milliseconds",
            &[
                Line {
                    label: "p50",
                    colour: BLUE,
                    points: step(&p(0.5)),
                },
                Line {
                    label: "p90",
                    colour: GREEN,
                    points: step(&p(0.9)),
                },
                Line {
                    label: "p99",
                    colour: RED,
                    points: step(&p(0.99)),
                },
            ],
        )?;
        written.push(path);
        let path = dir.join("steps-throughput.svg");
        draw(
            &path,
            &format!("{name}: achieved throughput per step"),
            "offered arrivals per second",
            "completed per second",
            &[
                Line {
                    label: "achieved",
                    colour: BLUE,
                    points: step(&|h, secs| h.len() as f64 / secs),
                },
                Line {
                    label: "offered",
                    colour: BLACK,
                    points: report.steps.iter().map(|s| (s.rate, s.rate)).collect(),
                },
            ],
        )?;
        written.push(path);
    }
    Ok(written)
}

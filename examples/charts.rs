//! Turns benchmark results into PNG charts (plotters).
//!
//! ```text
//! cargo run --release --example charts -- --specbench out/specbench --criterion target/criterion \
//!     --out docs/img
//! ```
//!
//! Inputs: the Spec-Bench runner's `summary.json` (`examples/specbench.rs`) and criterion's
//! estimates under `target/criterion` (`cargo bench --bench generation -- forward-n`). Outputs,
//! each skipped with a note when its input is missing:
//! - `speedup_per_category.png`: speculative / plain tokens/s per Spec-Bench category, per k;
//! - `acceptance_per_position.png`: acceptance rate at each draft position, per k;
//! - `verification_cost.png`: time of one forward of n = 1..9 tokens (criterion), target and draft,
//!   relative to n = 1;
//! - `latency_distributions.png`: cumulative distributions of inter-token latency and TTFT, plain
//!   vs speculative.
//!
//! Text needs a TrueType font: DejaVu Sans / Liberation Sans from the system font directories, or
//! the file named by `SPECULA_CHART_FONT`.

use clap::Parser;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Draw benchmark charts.
#[derive(Parser, Debug)]
struct Args {
    /// Spec-Bench runner output directory (with summary.json).
    #[arg(long, default_value = "out/specbench")]
    specbench: PathBuf,
    /// Criterion output directory.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Where the PNGs go.
    #[arg(long, default_value = "docs/img")]
    out: PathBuf,
}

type BoxErr = Box<dyn std::error::Error>;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load_font() -> Result<(), BoxErr> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SPECULA_CHART_FONT") {
        candidates.push(PathBuf::from(p));
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/Library/Fonts/Arial.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
    ] {
        candidates.push(PathBuf::from(p));
    }
    for p in &candidates {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(
        "no TrueType font found: install DejaVu (Debian: fonts-dejavu-core) or set \
         SPECULA_CHART_FONT=/path/to/font.ttf"
            .into(),
    )
}

fn run() -> Result<(), BoxErr> {
    let args = Args::parse();
    load_font()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let summary_path = args.specbench.join("summary.json");
    match std::fs::read_to_string(&summary_path) {
        Ok(text) => {
            let summary: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", summary_path.display()))?;
            speedup_chart(&summary, &args.out.join("speedup_per_category.png"))?;
            position_chart(&summary, &args.out.join("acceptance_per_position.png"))?;
            latency_chart(&summary, &args.out.join("latency_distributions.png"))?;
        }
        Err(e) => eprintln!(
            "skipping Spec-Bench charts: {}: {e} (run examples/specbench.rs first)",
            summary_path.display()
        ),
    }
    cost_chart(&args.criterion, &args.out.join("verification_cost.png"))?;
    eprintln!("charts in {}", args.out.display());
    Ok(())
}

/// Speculative modes (name, k) in the order of the summary, plain excluded.
fn spec_modes(summary: &Value) -> Vec<String> {
    let mut names: Vec<(u64, String)> = summary["rows"][0]["modes"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(name, v)| v["draft_len"].as_u64().map(|k| (k, name.clone())))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.into_iter().map(|(_, n)| n).collect()
}

fn speedup_chart(summary: &Value, path: &Path) -> Result<(), BoxErr> {
    let rows = summary["rows"].as_array().cloned().unwrap_or_default();
    let modes = spec_modes(summary);
    if rows.is_empty() || modes.is_empty() {
        eprintln!("skipping {}: no speculative rows", path.display());
        return Ok(());
    }
    let cats: Vec<String> = rows
        .iter()
        .map(|r| r["category"].as_str().unwrap_or("?").to_string())
        .collect();
    let value = |r: &Value, m: &str| r["modes"][m]["speedup"].as_f64().unwrap_or(0.0);
    let ymax = rows
        .iter()
        .flat_map(|r| modes.iter().map(move |m| value(r, m)))
        .fold(1.2f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = cats.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Speculative speedup over plain decoding, per Spec-Bench category",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n, 0f64..ymax)?;
    let labels = cats.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(cats.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 13))
        .y_desc("speedup (x)")
        .draw()?;
    let w = 0.8 / modes.len() as f64;
    for (mi, m) in modes.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let x0 = i as f64 + 0.1 + mi as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, value(r, m))], color.filled())
            }))?
            .label(m.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart.draw_series(LineSeries::new(
        vec![(0.0, 1.0), (n, 1.0)],
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn position_chart(summary: &Value, path: &Path) -> Result<(), BoxErr> {
    let Some(overall) = summary["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["category"] == "overall"))
    else {
        eprintln!("skipping {}: no overall row", path.display());
        return Ok(());
    };
    let modes = spec_modes(summary);
    let series: Vec<(String, Vec<f64>)> = modes
        .iter()
        .map(|m| {
            let v = overall["modes"][m]["position_acceptance"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            (m.clone(), v)
        })
        .filter(|(_, v): &(String, Vec<f64>)| !v.is_empty())
        .collect();
    let kmax = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    if kmax == 0 {
        eprintln!("skipping {}: no per-position acceptance", path.display());
        return Ok(());
    }
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Acceptance rate at each draft position (all categories)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..kmax as f64 + 0.5, 0f64..1.05)?;
    chart
        .configure_mesh()
        .x_labels(kmax)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("draft position")
        .y_desc("acceptance rate (given the position was reached)")
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(j, &a)| (j as f64 + 1.0, a))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Empirical CDF points of a sample.
fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.into_iter()
        .enumerate()
        .map(|(i, x)| (x, (i + 1) as f64 / n))
        .collect()
}

fn latency_chart(summary: &Value, path: &Path) -> Result<(), BoxErr> {
    let Some(lat) = summary["latency"].as_object() else {
        eprintln!("skipping {}: no latency samples", path.display());
        return Ok(());
    };
    let get = |key: &str| -> Vec<(String, Vec<f64>)> {
        lat.iter()
            .map(|(m, v)| {
                let xs = v[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                (m.clone(), xs)
            })
            .filter(|(_, xs): &(String, Vec<f64>)| !xs.is_empty())
            .collect()
    };
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, (key, title)) in panels.iter().zip([
        ("itl_ms", "Inter-token latency, CDF"),
        ("ttft_ms", "Time to first token, CDF"),
    ]) {
        let series = get(key);
        // Clip the long tail at the 99th percentile of all samples for readability.
        let mut all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        if all.is_empty() {
            continue;
        }
        all.sort_by(f64::total_cmp);
        let xmax = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)] * 1.05;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax.max(1.0), 0f64..1.0)?;
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("fraction of samples")
            .draw()?;
        for (i, (name, v)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(cdf(v), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Mean time (ms) criterion measured for `<dir>/<group>/n=<n>`.
fn criterion_ms(dir: &Path, group: &str, n: usize) -> Option<f64> {
    let p = dir
        .join(group)
        .join(format!("n={n}"))
        .join("new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64().map(|ns| ns / 1e6)
}

fn cost_chart(dir: &Path, path: &Path) -> Result<(), BoxErr> {
    let groups = [
        ("qwen-1.5b-forward-n", "1.5B target"),
        ("qwen-0.5b-forward-n", "0.5B draft"),
        ("synthetic-forward-n", "synthetic"),
    ];
    let series: Vec<(&str, Vec<(f64, f64)>)> = groups
        .iter()
        .filter_map(|(g, label)| {
            let pts: Vec<(f64, f64)> = (1..=9)
                .filter_map(|n| criterion_ms(dir, g, n).map(|ms| (n as f64, ms)))
                .collect();
            let base = pts.iter().find(|(n, _)| *n == 1.0)?.1;
            (pts.len() > 1).then(|| {
                (
                    *label,
                    pts.into_iter().map(|(n, ms)| (n, ms / base)).collect(),
                )
            })
        })
        .collect();
    if series.is_empty() {
        eprintln!(
            "skipping {}: no criterion forward-n results in {} (run cargo bench --bench \
             generation -- forward-n)",
            path.display(),
            dir.display()
        );
        return Ok(());
    }
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(9.0f64, f64::max)
        * 1.05;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Verification cost: one forward of n tokens / one forward of 1 token",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..9.5, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_labels(9)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("tokens in the forward (n)")
        .y_desc("cost relative to n = 1")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            (1..=9).map(|n| (n as f64, n as f64)),
            BLACK.mix(0.4).stroke_width(1),
        ))?
        .label("n x (no batching gain)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

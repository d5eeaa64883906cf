//! `ringkv-tools bench-scaling`: folds the runs of `scripts/bench-compare.sh --scaling`
//! (one `bench --json` output per dimension, value and target, named
//! `DIMENSION.VALUE.TARGET.json`) into one markdown table per dimension and a plot.
//!
//! Every ringkv figure is also given as a ratio to the reference measured at the same
//! point of the same run: the machines are shared, and only ratios travel between runs.
//! The plot (SVG, with `plotters`) has one panel per dimension: throughput ÷ the
//! reference's, one line per ringkv target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use ringkv::bench::report::Report;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchScalingArgs {
    /// The directory of `bench --json` outputs, named DIMENSION.VALUE.TARGET.json.
    pub dir: PathBuf,
    /// A line saying how the runs were made, put above the tables.
    #[arg(long, default_value = "")]
    pub settings: String,
    /// Where to write the plot (SVG).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// The dimensions, in the order they are shown, with how a value reads.
pub const DIMENSIONS: &[(&str, &str)] = &[
    ("concurrency", "clients"),
    ("value_size", "value bytes"),
    ("keys", "keys"),
    ("cluster_size", "nodes"),
];

/// The reference's label: every ratio is against it.
const REFERENCE: &str = "reference";

/// Runs by dimension, then value, then target label.
#[derive(Default, Debug)]
pub struct Points(BTreeMap<String, BTreeMap<u64, BTreeMap<String, Report>>>);

impl Points {
    pub fn load(dir: &Path) -> Result<Points, String> {
        let mut points = Points::default();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let (dimension, value, target) = parse_name(stem)
                .ok_or_else(|| format!("{name}: not DIMENSION.VALUE.TARGET.json"))?;
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let report: Report =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            points.add(dimension, value, target, report);
        }
        if points.0.is_empty() {
            return Err(format!("{}: no runs", dir.display()));
        }
        Ok(points)
    }

    pub fn add(&mut self, dimension: &str, value: u64, target: &str, report: Report) {
        self.0
            .entry(dimension.to_owned())
            .or_default()
            .entry(value)
            .or_default()
            .insert(target.to_owned(), report);
    }

    /// The ringkv targets measured in `dimension`, in label order.
    fn targets(&self, dimension: &str) -> Vec<String> {
        let mut targets: Vec<String> = self
            .0
            .get(dimension)
            .into_iter()
            .flat_map(|values| values.values().flat_map(|t| t.keys().cloned()))
            .filter(|t| t != REFERENCE)
            .collect();
        targets.sort_by_key(|t| (cluster_size_of(t), t.clone()));
        targets.dedup();
        targets
    }

    /// The reference's run at this point; along `cluster_size`, the only one it has (the
    /// reference is one process whatever the cluster size).
    fn reference(&self, dimension: &str, value: u64) -> Option<&Report> {
        let values = self.0.get(dimension)?;
        values
            .get(&value)
            .and_then(|t| t.get(REFERENCE))
            .or_else(|| values.values().find_map(|t| t.get(REFERENCE)))
    }

    /// Throughput ÷ the reference's at the same point, per target: the plotted series.
    pub fn ratios(&self, dimension: &str) -> BTreeMap<String, Vec<(u64, f64)>> {
        let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
        let Some(values) = self.0.get(dimension) else {
            return series;
        };
        for (value, targets) in values {
            let Some(reference) = self.reference(dimension, *value) else {
                continue;
            };
            for (target, report) in targets {
                if target == REFERENCE || reference.ops_per_sec <= 0.0 {
                    continue;
                }
                series
                    .entry(target.clone())
                    .or_default()
                    .push((*value, report.ops_per_sec / reference.ops_per_sec));
            }
        }
        series
    }
}

/// `keys.1000000.ringkv-3` → ("keys", 1000000, "ringkv-3"). Target labels hold no dot.
fn parse_name(stem: &str) -> Option<(&str, u64, &str)> {
    let mut parts = stem.splitn(3, '.');
    let dimension = parts.next()?;
    let value = parts.next()?.parse().ok()?;
    let target = parts.next()?;
    (!target.is_empty() && !target.contains('.')).then_some((dimension, value, target))
}

/// `ringkv-5` → 5; other labels sort first.
fn cluster_size_of(label: &str) -> u64 {
    label
        .strip_prefix("ringkv-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn human(value: u64, unit: &str) -> String {
    match unit {
        "value bytes" if value >= 1024 && value.is_multiple_of(1024) => {
            format!("{} KiB", value / 1024)
        }
        "value bytes" => format!("{value} B"),
        "keys" if value >= 1_000_000 && value.is_multiple_of(1_000_000) => {
            format!("{}M", value / 1_000_000)
        }
        "keys" if value >= 1000 && value.is_multiple_of(1000) => format!("{}k", value / 1000),
        _ => value.to_string(),
    }
}

fn cpu(report: &Report) -> String {
    report
        .efficiency
        .cpu_us_per_op
        .map_or("–".to_owned(), |c| format!("{c:.0}"))
}

/// The markdown: one table per dimension.
pub fn render(points: &Points, settings: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# ringkv: how cost grows\n");
    if !settings.is_empty() {
        let _ = writeln!(md, "{settings}\n");
    }
    let _ = writeln!(
        md,
        "Each cell: ops/s (÷ the reference's at the same point), then PUT p99 / GET p99 in ms, \
         then server CPU-µs per op (every node summed). Errors, when any, follow in brackets.\n"
    );
    for (dimension, unit) in DIMENSIONS {
        let Some(values) = points.0.get(*dimension) else {
            continue;
        };
        let targets = points.targets(dimension);
        let _ = writeln!(md, "## {dimension}\n");
        let mut header = format!("| {unit} | reference |");
        let mut rule = "|---|---|".to_owned();
        for t in &targets {
            let _ = write!(header, " {t} |");
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for (value, runs) in values {
            let reference = points.reference(dimension, *value);
            let mut row = format!("| {} |", human(*value, unit));
            match runs.get(REFERENCE) {
                Some(r) => {
                    let _ = write!(row, " {:.0}, {} µs/op |", r.ops_per_sec, cpu(r));
                }
                None => row.push_str(" (as at 1) |"),
            }
            for t in &targets {
                let Some(r) = runs.get(t) else {
                    row.push_str(" |");
                    continue;
                };
                let ratio = reference
                    .filter(|x| x.ops_per_sec > 0.0)
                    .map_or("–".to_owned(), |x| {
                        format!("{:.2}", r.ops_per_sec / x.ops_per_sec)
                    });
                let _ = write!(
                    row,
                    " {:.0} (÷ {ratio}), {:.1} / {:.1} ms, {} µs/op",
                    r.ops_per_sec,
                    r.put.p99_us as f64 / 1000.0,
                    r.get.p99_us as f64 / 1000.0,
                    cpu(r)
                );
                if r.errors_total > 0 {
                    let _ = write!(row, " [{} errors]", r.errors_total);
                }
                row.push_str(" |");
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');
    }
    md
}

/// The plot: one panel per dimension, throughput ÷ the reference's per ringkv target, on
/// a log x axis (every dimension grows by factors).
pub fn plot(points: &Points, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled("ringkv throughput ÷ the reference's", ("sans-serif", 24))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 2));
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for ((dimension, unit), panel) in DIMENSIONS.iter().zip(panels.iter()) {
        let series = points.ratios(dimension);
        let xs: Vec<u64> = series.values().flatten().map(|(x, _)| *x).collect();
        let (Some(&lo), Some(&hi)) = (xs.iter().min(), xs.iter().max()) else {
            continue;
        };
        let top = series
            .values()
            .flatten()
            .map(|(_, y)| *y)
            .fold(0.0_f64, f64::max)
            .max(0.1)
            * 1.2;
        // A log axis needs a span: a dimension measured at one value gets one around it.
        let (lo, hi) = if lo == hi { (lo / 2, hi * 2) } else { (lo, hi) };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("by {unit}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((lo.max(1)..hi.max(2)).log_scale(), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(*unit)
            .y_desc("÷ reference")
            .x_label_formatter(&|v| human(*v, unit))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (target, points)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(target.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

pub fn run(args: BenchScalingArgs) -> Result<(), String> {
    let points = Points::load(&args.dir)?;
    print!("{}", render(&points, &args.settings));
    if let Some(svg) = &args.svg {
        plot(&points, svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv::bench::report::{Efficiency, OpStats, Settings};

    fn report(label: &str, ops_per_sec: f64) -> Report {
        Report {
            label: label.into(),
            settings: Settings {
                target: "ringkv".into(),
                urls: vec![],
                concurrency: 32,
                read_ratio: 0.5,
                value_size: 100,
                keys: 10_000,
                key_dist: "uniform".into(),
                r: None,
                w: None,
                seed: 1,
            },
            elapsed_secs: 4.0,
            ops: (ops_per_sec * 4.0) as u64,
            ops_per_sec,
            get: OpStats {
                p99_us: 2_000,
                ..OpStats::default()
            },
            put: OpStats {
                p99_us: 5_000,
                ..OpStats::default()
            },
            misses: 0,
            errors_total: 0,
            errors: BTreeMap::new(),
            efficiency: Efficiency {
                cpu_us_per_op: Some(30.0),
                ..Efficiency::default()
            },
            preloaded: 0,
        }
    }

    #[test]
    fn names_parse_and_bad_ones_do_not() {
        assert_eq!(
            parse_name("keys.1000000.ringkv-3"),
            Some(("keys", 1_000_000, "ringkv-3"))
        );
        assert_eq!(parse_name("keys.x.ringkv-3"), None);
        assert_eq!(parse_name("keys.10"), None);
        assert_eq!(parse_name("keys.10.a.b"), None);
    }

    #[test]
    fn ratios_are_against_the_reference_at_the_same_point() {
        let mut points = Points::default();
        points.add("concurrency", 1, "reference", report("reference", 1000.0));
        points.add("concurrency", 1, "ringkv-1", report("ringkv-1", 500.0));
        points.add("concurrency", 8, "reference", report("reference", 4000.0));
        points.add("concurrency", 8, "ringkv-1", report("ringkv-1", 1000.0));
        // Along cluster_size the reference was measured once, at 1.
        points.add("cluster_size", 1, "reference", report("reference", 2000.0));
        points.add("cluster_size", 3, "ringkv-3", report("ringkv-3", 500.0));
        let by_conc = points.ratios("concurrency");
        assert_eq!(by_conc["ringkv-1"], vec![(1, 0.5), (8, 0.25)]);
        assert_eq!(points.ratios("cluster_size")["ringkv-3"], vec![(3, 0.25)]);

        let md = render(&points, "settings line");
        assert!(md.contains("settings line"), "{md}");
        assert!(
            md.contains("| 8 | 4000, 30 µs/op | 1000 (÷ 0.25), 5.0 / 2.0 ms, 30 µs/op |"),
            "{md}"
        );
        assert!(md.contains("| 3 | (as at 1) | 500 (÷ 0.25)"), "{md}");
    }

    #[test]
    fn the_plot_is_an_svg_with_every_series() {
        let mut points = Points::default();
        for (dim, values) in [
            ("concurrency", vec![1, 8, 32]),
            ("value_size", vec![100, 4096, 65536]),
            ("keys", vec![10_000, 1_000_000]),
        ] {
            for v in values {
                points.add(dim, v, "reference", report("reference", 1000.0));
                points.add(dim, v, "ringkv-1", report("ringkv-1", 400.0));
                points.add(dim, v, "ringkv-3", report("ringkv-3", 200.0));
            }
        }
        points.add("cluster_size", 1, "reference", report("reference", 1000.0));
        points.add("cluster_size", 5, "ringkv-5", report("ringkv-5", 100.0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaling.svg");
        plot(&points, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for label in ["ringkv-1", "ringkv-3", "ringkv-5", "by clients", "by nodes"] {
            assert!(svg.contains(label), "{label} missing from the plot");
        }
        assert!(
            svg.matches("<polyline").count() >= 7,
            "one line per series and panel"
        );
    }
}

//! `ringkv-tools bench-report`: folds the result files of `scripts/bench-compare.sh` (one
//! `bench --json` output per target, workload and round) into one markdown table
//! of figures and ratios, and checks the performance targets (the second table) against them.
//!
//! Rounds alternate between targets, so a slow moment of the shared machine hurts every
//! target about equally; each figure is the median over the rounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use ringkv::bench::report::Report;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchReportArgs {
    /// The directory of `bench --json` outputs.
    pub dir: std::path::PathBuf,
    /// A line saying how the runs were made, put above the table.
    #[arg(long, default_value = "")]
    pub settings: String,
}

/// Prints the comparison table of the runs in `args.dir` on stdout.
pub fn run(args: BenchReportArgs) -> Result<(), String> {
    let runs = Runs::load(&args.dir)?;
    print!("{}", render(&runs, &args.settings));
    Ok(())
}

/// The rows of the table, in order: the label each run was given, and how it reads.
pub const ROWS: &[(&str, &str)] = &[
    ("reference", "reference (in-memory axum)"),
    ("ringkv-1-always", "ringkv 1 node, fsync always"),
    ("ringkv-1-periodic", "ringkv 1 node, fsync periodic"),
    ("ringkv-3", "ringkv 3 nodes, N=3 R=2 W=2, fsync always"),
    ("etcd-1", "etcd 1 member"),
    ("etcd-3", "etcd 3 members"),
    ("redis-always", "Redis, appendfsync always"),
    ("redis-none", "Redis, no persistence"),
];

/// Version metadata counted per replicated copy in the internode-bytes target: a dot,
/// a version vector of up to 3 entries, the write time and the content type, as msgpack.
pub const VERSION_OVERHEAD_BYTES: f64 = 64.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Put,
    Get,
    Mixed,
}

impl Workload {
    fn of(report: &Report) -> Workload {
        match report.settings.read_ratio {
            r if r <= 0.0 => Workload::Put,
            r if r >= 1.0 => Workload::Get,
            _ => Workload::Mixed,
        }
    }
}

/// Reports by label and workload, every round.
#[derive(Default)]
pub struct Runs(BTreeMap<(String, Workload), Vec<Report>>);

impl Runs {
    pub fn load(dir: &Path) -> Result<Runs, String> {
        let mut runs = Runs::default();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let report: Report =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                runs.add(report);
            }
        }
        Ok(runs)
    }

    pub fn add(&mut self, report: Report) {
        let key = (report.label.clone(), Workload::of(&report));
        self.0.entry(key).or_default().push(report);
    }

    /// The median over rounds of one figure, if any round measured it.
    fn median(&self, label: &str, w: Workload, f: impl Fn(&Report) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self
            .0
            .get(&(label.to_owned(), w))?
            .iter()
            .filter_map(f)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        })
    }

    fn rounds(&self) -> usize {
        self.0.values().map(Vec::len).max().unwrap_or(0)
    }

    fn put_ops(&self, l: &str) -> Option<f64> {
        self.median(l, Workload::Put, |r| Some(r.put.ops_per_sec))
    }
    fn get_ops(&self, l: &str) -> Option<f64> {
        self.median(l, Workload::Get, |r| Some(r.get.ops_per_sec))
    }
    fn put_p99_ms(&self, l: &str) -> Option<f64> {
        self.median(l, Workload::Put, |r| Some(r.put.p99_us as f64 / 1000.0))
    }
    fn get_p99_ms(&self, l: &str) -> Option<f64> {
        self.median(l, Workload::Get, |r| Some(r.get.p99_us as f64 / 1000.0))
    }
    fn errors(&self, l: &str) -> u64 {
        self.0
            .iter()
            .filter(|((label, _), _)| label == l)
            .flat_map(|(_, v)| v.iter().map(|r| r.errors_total))
            .sum()
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The markdown: the figures of every target, then the performance targets.
pub fn render(runs: &Runs, settings_line: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{settings_line}\n");
    let _ = writeln!(
        out,
        "| target | PUT ops/s | PUT p99 ms | GET ops/s | GET p99 ms | 50/50 ops/s | server CPU µs/op (50/50) | internode B/write | fsyncs/write | PUT ÷ ref | GET ÷ ref | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let (ref_put, ref_get) = (runs.put_ops("reference"), runs.get_ops("reference"));
    for (label, name) in ROWS {
        if !runs.0.keys().any(|(l, _)| l == label) {
            continue;
        }
        let mixed = runs.median(label, Workload::Mixed, |r| Some(r.ops_per_sec));
        let cpu = runs.median(label, Workload::Mixed, |r| r.efficiency.cpu_us_per_op);
        let bytes = runs.median(label, Workload::Put, |r| {
            r.efficiency.internode_bytes_per_write
        });
        let fsyncs = runs.median(label, Workload::Put, |r| r.efficiency.fsyncs_per_write);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(runs.put_ops(label), 0),
            num(runs.put_p99_ms(label), 1),
            num(runs.get_ops(label), 0),
            num(runs.get_p99_ms(label), 1),
            num(mixed, 0),
            num(cpu, 0),
            num(bytes, 0),
            num(fsyncs, 3),
            num(ratio(runs.put_ops(label), ref_put), 2),
            num(ratio(runs.get_ops(label), ref_get), 2),
            runs.errors(label),
        );
    }
    let _ = writeln!(out, "\n{}", targets(runs));
    out
}

/// One figure of the targets table: its value, and whether it meets the target.
struct Check {
    figure: &'static str,
    target: &'static str,
    value: Option<f64>,
    /// `None`: a figure to report, with no pass mark.
    met: Option<bool>,
}

fn check(
    figure: &'static str,
    target: &'static str,
    value: Option<f64>,
    pass: impl Fn(f64) -> bool,
    graded: bool,
) -> Check {
    Check {
        figure,
        target,
        value,
        met: value.filter(|_| graded).map(pass),
    }
}

fn targets(runs: &Runs) -> String {
    let one = "ringkv-1-always";
    let three = "ringkv-3";
    // The benchmark's keys (`bench-00000000`) are 14 bytes.
    let key_bytes = 14.0;
    let value_bytes = runs
        .0
        .values()
        .flatten()
        .map(|r| r.settings.value_size as f64)
        .next()
        .unwrap_or(100.0);
    let bytes_bound = 3.0 * (key_bytes + value_bytes + VERSION_OVERHEAD_BYTES);
    let bytes = runs.median(three, Workload::Put, |r| {
        r.efficiency.internode_bytes_per_write
    });
    let checks = [
        check(
            "1-node GET ÷ reference GET",
            "≥ 0.75",
            ratio(runs.get_ops(one), runs.get_ops("reference")),
            |v| v >= 0.75,
            true,
        ),
        check(
            "1-node PUT (fsync always) ÷ reference PUT",
            "≥ 0.50",
            ratio(runs.put_ops(one), runs.put_ops("reference")),
            |v| v >= 0.5,
            true,
        ),
        check(
            "3-node PUT ÷ etcd 3-member PUT",
            "≥ 5",
            ratio(runs.put_ops(three), runs.put_ops("etcd-3")),
            |v| v >= 5.0,
            true,
        ),
        check(
            "3-node GET (R=2) ÷ etcd 3-member serializable GET",
            "≥ 4",
            ratio(runs.get_ops(three), runs.get_ops("etcd-3")),
            |v| v >= 4.0,
            true,
        ),
        check(
            "3-node PUT p99 ÷ etcd 3-member PUT p99",
            "≤ 0.33",
            ratio(runs.put_p99_ms(three), runs.put_p99_ms("etcd-3")),
            |v| v <= 0.33,
            true,
        ),
        check(
            "1-node GET ÷ Redis (no persistence) GET",
            "goal ≥ 0.5",
            ratio(runs.get_ops(one), runs.get_ops("redis-none")),
            |v| v >= 0.5,
            true,
        ),
        check(
            "fsyncs per acknowledged write, 1 node, fsync always",
            "≤ 0.2",
            runs.median(one, Workload::Put, |r| r.efficiency.fsyncs_per_write),
            |v| v <= 0.2,
            true,
        ),
        check(
            "fsyncs per acknowledged write, 3 nodes (all nodes summed)",
            "report",
            runs.median(three, Workload::Put, |r| r.efficiency.fsyncs_per_write),
            |_| true,
            false,
        ),
        check(
            "server CPU µs per op, 3 nodes, 50/50 (all nodes summed)",
            "report",
            runs.median(three, Workload::Mixed, |r| r.efficiency.cpu_us_per_op),
            |_| true,
            false,
        ),
        check(
            "internode bytes per write, 3 nodes",
            "≤ 3 × (key + value + 64)",
            bytes,
            |v| v <= bytes_bound,
            true,
        ),
    ];
    let mut out = String::from("| figure | target | measured | met |\n|---|---|---|---|\n");
    for c in checks {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None if c.value.is_none() => "not measured",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {met} |",
            c.figure,
            c.target,
            num(c.value, 3)
        );
    }
    let _ = write!(
        out,
        "\nMedians over {} alternating rounds. The internode-bytes bound is {bytes_bound:.0} B \
         (key {key_bytes:.0} B, value {value_bytes:.0} B, version overhead taken as \
         {VERSION_OVERHEAD_BYTES:.0} B).",
        runs.rounds()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv::bench::report::{Efficiency, OpStats, Settings};

    fn report(label: &str, read_ratio: f64, ops_per_sec: f64, p99_us: u64) -> Report {
        let op = OpStats {
            ops: 100,
            ops_per_sec,
            p99_us,
            ..OpStats::default()
        };
        Report {
            label: label.into(),
            settings: Settings {
                target: "ringkv".into(),
                urls: vec![],
                concurrency: 32,
                read_ratio,
                value_size: 100,
                keys: 1000,
                key_dist: "uniform".into(),
                r: None,
                w: None,
                seed: 1,
            },
            elapsed_secs: 1.0,
            ops: 100,
            ops_per_sec,
            get: op.clone(),
            put: op,
            misses: 0,
            errors_total: 0,
            errors: BTreeMap::new(),
            efficiency: Efficiency {
                fsyncs_per_write: Some(0.1),
                ..Efficiency::default()
            },
            preloaded: 0,
        }
    }

    #[test]
    fn figures_are_medians_and_ratios_are_against_the_reference() {
        let mut runs = Runs::default();
        for (ops, round_ops) in [(1000.0, 400.0), (3000.0, 600.0), (2000.0, 500.0)] {
            runs.add(report("reference", 0.0, ops, 1000));
            runs.add(report("reference", 1.0, ops, 1000));
            runs.add(report("ringkv-1-always", 0.0, round_ops, 2000));
            runs.add(report("ringkv-1-always", 1.0, round_ops * 2.0, 2000));
        }
        assert_eq!(runs.put_ops("reference"), Some(2000.0));
        let md = render(&runs, "settings");
        assert!(
            md.contains("| ringkv 1 node, fsync always | 500 | 2.0 | 1000 |"),
            "{md}"
        );
        // PUT ÷ ref = 0.25, GET ÷ ref = 0.50.
        assert!(md.contains("| 0.25 | 0.50 | 0 |"), "{md}");
        assert!(
            md.contains("| 1-node GET ÷ reference GET | ≥ 0.75 | 0.500 | **no** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| fsyncs per acknowledged write, 1 node, fsync always | ≤ 0.2 | 0.100 | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 3-node PUT ÷ etcd 3-member PUT | ≥ 5 | – | not measured |"),
            "{md}"
        );
        assert!(
            !md.contains("etcd 1 member |"),
            "absent targets get no row: {md}"
        );
    }
}

//! Many seeds: each run on a fresh thread, a few at a time; one line per failure, with the
//! command that replays it.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sabotage::Sabotage;

use crate::config::{Scenario, SimConfig, Storage};
use crate::run::{run_on_fresh_thread, Report};

pub struct SweepResult {
    pub runs: usize,
    pub failures: Vec<Report>,
    pub wall: Duration,
    pub simulated: Duration,
}

impl SweepResult {
    pub fn seeds_per_second(&self) -> f64 {
        self.runs as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The scenario a seed runs in a sweep of `all`: they take turns.
pub fn scenario_for(seed: u64, scenario: Option<Scenario>) -> Scenario {
    scenario.unwrap_or(Scenario::EVERY[(seed % Scenario::EVERY.len() as u64) as usize])
}

/// Runs `seeds` (with `scenario`, or each scenario in turn when `None`) on `jobs` threads.
/// `on_done` sees every report as it finishes.
pub fn sweep(
    base: &SimConfig,
    seeds: Range<u64>,
    scenario: Option<Scenario>,
    jobs: usize,
    on_done: impl Fn(&Report) + Send + Sync,
) -> SweepResult {
    let start = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let failures = Mutex::new(Vec::new());
    let runs = AtomicU64::new(0);
    let simulated_ms = AtomicU64::new(0);
    let on_done = Arc::new(on_done);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    break;
                }
                let config = SimConfig {
                    seed,
                    scenario: scenario_for(seed, scenario),
                    ..base.clone()
                };
                let report = run_on_fresh_thread(&config);
                runs.fetch_add(1, Ordering::SeqCst);
                simulated_ms.fetch_add(report.simulated.as_millis() as u64, Ordering::SeqCst);
                on_done(&report);
                if !report.passed() {
                    failures.lock().expect("failures").push(report);
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("failures");
    failures.sort_by_key(|r| r.config.seed);
    SweepResult {
        runs: runs.into_inner() as usize,
        failures,
        wall: start.elapsed(),
        simulated: Duration::from_millis(simulated_ms.into_inner()),
    }
}

/// The command that replays `config`.
pub fn replay_command(config: &SimConfig) -> String {
    let d = SimConfig::default();
    let mut cmd = format!(
        "ringkv-sim run --seed {} --scenario {} --nodes {} --duration {}",
        config.seed,
        config.scenario,
        config.nodes,
        humantime::format_duration(config.duration)
    );
    if config.storage == Storage::Memory {
        cmd.push_str(" --storage memory");
    }
    match config.sabotage {
        Sabotage::None => {}
        Sabotage::AckWithoutStore => cmd.push_str(" --sabotage ack-without-store"),
        Sabotage::SkipFsync => cmd.push_str(" --sabotage skip-fsync"),
    }
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    // Every other knob, printed where it differs from the default.
    let knobs = |c: &SimConfig| -> Vec<(&'static str, String)> {
        vec![
            ("clients", c.clients.to_string()),
            ("keys", c.keys.to_string()),
            ("n", c.n.to_string()),
            ("r", c.r.to_string()),
            ("w", c.w.to_string()),
            ("tick", dur(c.tick)),
            ("min-latency", dur(c.min_latency)),
            ("max-latency", dur(c.max_latency)),
            ("loss-rate", c.loss_rate.to_string()),
            ("fault-interval", dur(c.fault_interval)),
            ("fault-length", dur(c.fault_length)),
            ("settle", dur(c.settle)),
            ("gossip-interval", dur(c.gossip_interval)),
            ("anti-entropy-interval", dur(c.anti_entropy_interval)),
            ("handoff-interval", dur(c.handoff_interval)),
            ("rpc-timeout", dur(c.rpc_timeout)),
        ]
    };
    for ((name, value), (_, default)) in knobs(config).into_iter().zip(knobs(&d)) {
        if value != default {
            let _ = write!(cmd, " --{name} {value}");
        }
    }
    cmd
}

/// One line: what failed, and how to replay it.
pub fn failure_line(report: &Report) -> String {
    let what = match (&report.aborted, report.violations.first()) {
        (Some(e), _) => format!("aborted: {e}"),
        (None, Some(v)) => format!(
            "{} violation(s), first {}",
            report.violations.len(),
            v.invariant
        ),
        (None, None) => "passed".into(),
    };
    format!(
        "FAIL seed={} scenario={} {what}\n  replay: {}",
        report.config.seed,
        report.config.scenario,
        replay_command(&report.config)
    )
}

/// The full story of a failed run: every violation (up to a few) and the recent history
/// of each offending key.
pub fn explain(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seed {} scenario {}: {}",
        report.config.seed,
        report.config.scenario,
        if report.passed() { "PASS" } else { "FAIL" }
    );
    if let Some(e) = &report.aborted {
        let _ = writeln!(out, "  aborted: {e}");
    }
    let mut shown_keys = Vec::new();
    for v in report.violations.iter().take(8) {
        let _ = writeln!(out, "  violated {v}");
        if let Some(key) = &v.key {
            if shown_keys.contains(key) {
                continue;
            }
            shown_keys.push(key.clone());
            let events: Vec<_> = report.history.iter().filter(|e| &e.key == key).collect();
            let _ = writeln!(out, "  last events on {key} (of {}):", events.len());
            for e in events.iter().rev().take(12).rev() {
                let _ = writeln!(out, "    {e}");
            }
        }
    }
    if report.violations.len() > 8 {
        let _ = writeln!(out, "  … and {} more", report.violations.len() - 8);
    }
    let _ = writeln!(out, "  replay: {}", replay_command(&report.config));
    out
}

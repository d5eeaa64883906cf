//! What the servers spent: CPU time from `/proc/<pid>/stat` (or a cgroup's `cpu.stat`),
//! and ringkv's own counters from each node's `/metrics`. Sampled before and after the
//! measured phase; the report divides the differences by the operations done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `/proc/<pid>/stat` counts in USER_HZ ticks, which Linux fixes at 100 per second on
/// every architecture it exports to user space (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: u64 = 100;

/// Where server CPU time is read.
#[derive(Clone, Debug, Default)]
pub struct CpuSource {
    pub pids: Vec<u32>,
    pub cgroup: Option<PathBuf>,
}

impl CpuSource {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.cgroup.is_none()
    }

    /// CPU time used so far, user + system, in microseconds, summed over the sources.
    pub fn cpu_us(&self) -> Result<u64, String> {
        let mut total = 0;
        for pid in &self.pids {
            let path = format!("/proc/{pid}/stat");
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
            total += parse_stat_ticks(&text).ok_or_else(|| format!("{path}: unreadable"))?
                * (1_000_000 / USER_HZ);
        }
        if let Some(dir) = &self.cgroup {
            total += cgroup_usage_us(dir)?;
        }
        Ok(total)
    }
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name sits in parentheses
/// and may hold spaces, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state(3) ppid … utime is field 14 and stime 15 of the whole line.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cgroup_usage_us(dir: &Path) -> Result<u64, String> {
    let path = dir.join("cpu.stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{}: no usage_usec", path.display()))
}

/// ringkv counters summed over the nodes: metric name (without `ringkv_` and `_total`)
/// to value.
pub type Counters = BTreeMap<String, f64>;

/// Reads `/metrics` of every node and sums the counters by name.
pub async fn scrape(http: &reqwest::Client, urls: &[String]) -> Result<Counters, String> {
    let mut sum = Counters::new();
    for url in urls {
        let url = format!("{}/metrics", url.trim_end_matches('/'));
        let resp = http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        for (name, value) in parse_metrics(&text) {
            *sum.entry(name).or_default() += value;
        }
    }
    Ok(sum)
}

/// `ringkv_NAME_total VALUE` lines (labels are not used by ringkv's counters).
pub fn parse_metrics(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let name = name.strip_prefix("ringkv_")?;
            let name = name.strip_suffix("_total").unwrap_or(name);
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
}

/// `after - before` of one counter, if both samples have it.
pub fn delta(before: &Counters, after: &Counters, name: &str) -> Option<f64> {
    Some(after.get(name)? - before.get(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "1234 (tokio (rt) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 1 2 3";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_uses_some_cpu() {
        let me = CpuSource {
            pids: vec![std::process::id()],
            cgroup: None,
        };
        assert!(me.cpu_us().is_ok());
        let gone = CpuSource {
            pids: vec![u32::MAX],
            cgroup: None,
        };
        assert!(gone.cpu_us().is_err());
    }

    #[test]
    fn metrics_text_is_read_by_name() {
        let text = "# HELP ringkv_storage_fsyncs x\n# TYPE ringkv_storage_fsyncs counter\n\
                    ringkv_storage_fsyncs_total 12\nringkv_ready 1\nother_metric 3\n# EOF\n";
        let m: Counters = parse_metrics(text).collect();
        assert_eq!(m.get("storage_fsyncs"), Some(&12.0));
        assert_eq!(m.get("ready"), Some(&1.0));
        assert_eq!(m.len(), 2);
    }
}

//! The process metrics every Prometheus exporter offers under the same names
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, …),
//! read from `/proc/self` at each scrape. Absent where there is no procfs (not Linux):
//! nothing is made up.

/// What one read of `/proc/self` found; each figure is `None` when its file could not be
/// read or parsed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel reports them in USER_HZ,
/// which is 100 on every architecture Linux runs on today (Prometheus's own procfs
/// reader assumes the same), so no `sysconf` call is needed.
const USER_HZ: f64 = 100.0;

/// Descriptors counted at most: a scrape must not walk an unbounded directory.
const MAX_FDS_COUNTED: usize = 1 << 20;

/// Reads this process's figures.
pub fn read() -> Process {
    if !cfg!(target_os = "linux") {
        return Process::default();
    }
    let text = |path: &str| std::fs::read_to_string(path).ok();
    let mut p = Process::default();
    if let Some(status) = text("/proc/self/status") {
        p.resident_bytes = status_kib(&status, "VmRSS:").map(|k| k.saturating_mul(1024));
        p.virtual_bytes = status_kib(&status, "VmSize:").map(|k| k.saturating_mul(1024));
        p.threads = status_kib(&status, "Threads:");
    }
    if let Some(stat) = text("/proc/self/stat") {
        let fields = stat_fields(&stat);
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        // After the command: state is field 3, utime 14, stime 15, starttime 22.
        if let (Some(user), Some(system)) = (ticks(14 - 3), ticks(15 - 3)) {
            p.cpu_seconds = Some(user.saturating_add(system) as f64 / USER_HZ);
        }
        let boot = text("/proc/stat").and_then(|s| boot_time(&s));
        if let (Some(start), Some(boot)) = (ticks(22 - 3), boot) {
            p.start_time_seconds = Some(boot as f64 + start as f64 / USER_HZ);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds = Some(dir.take(MAX_FDS_COUNTED).count() as u64);
    }
    p.max_fds = text("/proc/self/limits").and_then(|l| max_open_files(&l));
    p
}

/// `Name:   1234 kB` (or a bare count, as `Threads:`) from `/proc/self/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The fields of `/proc/self/stat` after the command, which is in parentheses and may
/// itself hold spaces and parentheses: hence from the last `)`.
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_text() {
        let status = "Name:\tringkv\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
        assert_eq!(status_kib(status, "Threads:"), Some(9));
        assert_eq!(status_kib(status, "VmSwap:"), None);

        let stat = "4242 (ring kv) (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 777 1000";
        let f = stat_fields(stat);
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250");
        assert_eq!(f[15 - 3], "50");
        assert_eq!(f[22 - 3], "777");
        assert!(stat_fields("garbage").is_empty());

        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = read();
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.threads.is_some_and(|n| n >= 1), "{p:?}");
        assert!(p.start_time_seconds.is_some_and(|t| t > 1e9), "{p:?}");
    }
}

//! The default size of redb's page cache, from the container's memory limit (pure logic,
//! plus one read of the cgroup files at start).
//!
//! A node in a container limited to 256 MiB was OOM-killed with redb's own 1 GiB cache
//! (issue 14). The rule: `min(DEFAULT_CACHE_BYTES, limit / 8)`, and never below
//! [`MIN_CACHE_BYTES`]; with no limit, `DEFAULT_CACHE_BYTES`. An eighth leaves the rest of
//! the limit to what the node holds per request, the allocator and the kernel's page cache
//! of the same file, which the cgroup also charges.

use crate::config::DEFAULT_CACHE_BYTES;

/// The smallest default cache: below it redb rereads its upper tree pages on every lookup.
pub const MIN_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A cgroup v1 "limit" at or above this is the kernel's "no limit" (it writes a number
/// close to `i64::MAX`, rounded to a page), not a real one.
const UNLIMITED_FROM: u64 = 1 << 60;

/// cgroup v2's limit file, as seen from inside the container's namespace.
pub const CGROUP_V2_MAX: &str = "/sys/fs/cgroup/memory.max";
/// cgroup v1's limit file.
pub const CGROUP_V1_LIMIT: &str = "/sys/fs/cgroup/memory/memory.limit_in_bytes";

/// The memory limit the contents of the cgroup files state: v2's `memory.max` first
/// (`max` is no limit), else v1's `memory.limit_in_bytes` (a huge number is no limit).
/// Anything that does not parse is taken as no limit: a guess would be worse.
pub fn parse_limit(v2: Option<&str>, v1: Option<&str>) -> Option<u64> {
    let parse = |text: &str| {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0 && n < UNLIMITED_FROM)
    };
    match v2 {
        Some(text) => parse(text),
        None => v1.and_then(parse),
    }
}

/// The cache a node gets when `--cache-size` is not given, under `limit` (see the module).
pub fn default_cache_bytes(limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return DEFAULT_CACHE_BYTES;
    };
    let eighth = usize::try_from(limit / 8).unwrap_or(usize::MAX);
    eighth.clamp(MIN_CACHE_BYTES, DEFAULT_CACHE_BYTES)
}

/// Reads this process's cgroup memory limit, if it has one.
pub fn read_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    parse_limit(
        read(CGROUP_V2_MAX).as_deref(),
        read(CGROUP_V1_LIMIT).as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn v2_max_is_no_limit_and_a_number_is_one() {
        assert_eq!(parse_limit(Some("max\n"), None), None);
        assert_eq!(parse_limit(Some("134217728\n"), None), Some(128 * MIB));
        // v2 present wins over v1, even when v2 says there is no limit.
        assert_eq!(parse_limit(Some("max"), Some("134217728")), None);
    }

    #[test]
    fn v1_huge_is_no_limit() {
        assert_eq!(parse_limit(None, Some("9223372036854771712\n")), None);
        assert_eq!(parse_limit(None, Some("536870912")), Some(512 * MIB));
        assert_eq!(parse_limit(None, None), None);
    }

    #[test]
    fn garbage_and_zero_are_no_limit() {
        assert_eq!(parse_limit(Some("lots"), None), None);
        assert_eq!(parse_limit(Some(""), None), None);
        assert_eq!(parse_limit(None, Some("0")), None);
        assert_eq!(parse_limit(None, Some("-1")), None);
    }

    #[test]
    fn the_default_is_an_eighth_of_the_limit_within_bounds() {
        assert_eq!(default_cache_bytes(None), DEFAULT_CACHE_BYTES);
        assert_eq!(default_cache_bytes(Some(128 * MIB)), 16 * MIB as usize);
        assert_eq!(default_cache_bytes(Some(256 * MIB)), 32 * MIB as usize);
        assert_eq!(
            default_cache_bytes(Some(8 * 1024 * MIB)),
            DEFAULT_CACHE_BYTES
        );
        assert_eq!(default_cache_bytes(Some(16 * MIB)), MIN_CACHE_BYTES);
        assert_eq!(default_cache_bytes(Some(u64::MAX / 2)), DEFAULT_CACHE_BYTES);
    }
}

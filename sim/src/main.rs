//! `ringkv-sim`: run, sweep and replay simulated ringkv clusters.

use std::process::ExitCode;

use clap::Parser;

/// libc's `getrandom`, replaced in this binary only: see `ringkv_sim::entropy`.
///
/// # Safety
/// Called by libc users with a valid buffer of `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, buflen: usize, flags: u32) -> isize {
    if buflen == 0 {
        return 0;
    }
    // SAFETY: the caller passes a writable buffer of `buflen` bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf, buflen) };
    if ringkv_sim::entropy::fill(out) {
        return buflen as isize;
    }
    // SAFETY: the same buffer, handed to the kernel.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, buflen, flags) as isize }
}

fn main() -> ExitCode {
    let cli = ringkv_sim::cli::Cli::parse();
    ringkv_sim::cli::main(cli)
}

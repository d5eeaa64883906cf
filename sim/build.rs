fn main() {
    // The binary's `getrandom` (src/main.rs) must win over libc's for callers that look
    // the symbol up at run time (dlsym), not only for those linked against it.
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=getrandom");
}

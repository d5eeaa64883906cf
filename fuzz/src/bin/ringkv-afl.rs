//! The AFL++ entry point: `ringkv-afl TARGET` runs one target of `ringkv_fuzz::TARGETS` in
//! AFL++'s persistent mode, and `ringkv-afl --list` names them. Built by
//! `cargo afl build --features afl` (scripts/fuzz.sh).

fn main() {
    let names: Vec<&str> = ringkv_fuzz::TARGETS.iter().map(|t| t.name).collect();
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        println!("{}", names.join("\n"));
        return;
    }
    let Some(target) = ringkv_fuzz::target(&name) else {
        eprintln!(
            "usage: ringkv-afl --list | TARGET, TARGET one of: {}",
            names.join(" ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}

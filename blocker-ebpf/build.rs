use which::which;

/// Rebuilds the eBPF object when the linker changes (a new bpf-linker may emit different code).
/// Before `cargo xtask setup` installed it, blocker-user's build script watches for it.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}

use which::which;

/// Rebuilds the eBPF object when the linker changes (a new bpf-linker may emit different code).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

use std::path::PathBuf;

use aya_build::{Package, Toolchain};

/// Builds the XDP object from blocker-ebpf (for the bpf target, with BTF) into OUT_DIR, where
/// `include_bytes_aligned!` embeds it into the `blocker` binary.
///
/// A fresh clone builds `xtask` (which links this crate through the tests) before
/// `cargo xtask setup` has installed bpf-linker: that build embeds an empty object, which
/// `blocker` refuses at load with a hint, and watches the linker's install path so the build
/// after setup embeds the real program.
fn main() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        let cargo_home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        println!("cargo:rerun-if-changed={cargo_home}/bin/bpf-linker");
        println!("cargo:rerun-if-env-changed=PATH");
        println!(
            "cargo:warning=bpf-linker not found: building without the XDP program (run `cargo xtask setup`)"
        );
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("blocker-xdp");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../blocker-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "blocker-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

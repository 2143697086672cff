use aya_build::{Package, Toolchain};

/// Builds the XDP object from blocker-ebpf (for the bpf target, with BTF) into OUT_DIR, where
/// `include_bytes_aligned!` embeds it into the `blocker` binary.
fn main() -> anyhow::Result<()> {
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

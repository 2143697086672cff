//! Crafted frames through the attached program itself with BPF_PROG_TEST_RUN (`bpftool prog
//! run`), and the test-only clock override in its settings.

use std::process::Command;

use serde_json::Value;

use crate::TestNet;

/// XDP return codes.
pub const XDP_DROP: u64 = 1;
pub const XDP_PASS: u64 = 2;
pub const XDP_TX: u64 = 3;

/// Byte offset of `Settings::clock_override_ms` (blocker-common's layout).
const CLOCK_OVERRIDE_AT: usize = 32;

pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// The program `blocker load` attached to the server's veth.
pub struct Program<'a> {
    net: &'a TestNet,
    id: u64,
}

impl<'a> Program<'a> {
    pub fn attached(net: &'a TestNet) -> Self {
        let link = net.pin_dir.join(format!("links/{}@native", net.server_if));
        let link = bpftool_json(&["link", "show", "pinned", &link.to_string_lossy()]);
        let id = link["prog_id"].as_u64().expect("prog_id");
        Self { net, id }
    }

    /// Runs `frame` through the program on CPU 0, so per-CPU state (reject tokens, LRU
    /// lists) is one CPU's; returns the XDP verdict.
    pub fn run(&self, frame: &[u8]) -> u64 {
        let path = self.net.state_dir.path().join("frame.bin");
        std::fs::write(&path, frame).expect("write frame");
        let out = Command::new("taskset")
            .args(["-c", "0", "bpftool", "-j", "prog", "run", "id"])
            .arg(self.id.to_string())
            .arg("data_in")
            .arg(&path)
            .output()
            .expect("running taskset bpftool");
        assert!(
            out.status.success(),
            "bpftool prog run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        result["retval"].as_u64().expect("retval")
    }

    /// Sets the time the program uses (milliseconds; 0 = its real clocks).
    pub fn set_clock_ms(&self, now_ms: u64) {
        let map = self.net.pin_dir.join("SETTINGS");
        let map = map.to_string_lossy();
        let current = bpftool_json(&["map", "lookup", "pinned", &map, "key", "0", "0", "0", "0"]);
        let mut bytes: Vec<String> = current["value"]
            .as_array()
            .expect("settings bytes")
            .iter()
            .map(|byte| byte.as_str().expect("hex byte").to_string())
            .collect();
        for (i, byte) in now_ms.to_le_bytes().iter().enumerate() {
            bytes[CLOCK_OVERRIDE_AT + i] = format!("{byte:#04x}");
        }
        let mut args = vec!["map", "update", "pinned", &map, "key", "0", "0", "0", "0"];
        args.push("value");
        args.extend(bytes.iter().map(String::as_str));
        let out = Command::new("bpftool")
            .args(&args)
            .output()
            .expect("running bpftool");
        assert!(
            out.status.success(),
            "bpftool map update: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

//! Program sizes for the report: instructions after the verifier (xlated), from bpftool.

use anyhow::{Context, Result};

use super::sh;

/// Translated instructions of the program with `id`.
pub fn xlated_insns(id: u32) -> Result<u64> {
    let out = sh("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
    let info: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = info["bytes_xlated"]
        .as_u64()
        .with_context(|| format!("no bytes_xlated for program {id}"))?;
    Ok(bytes / 8)
}

/// Translated instructions of the xdp-filter program loaded last (libxdp may put a
/// dispatcher in front of it on the interface).
pub fn xdp_filter_insns() -> Result<u64> {
    let out = sh("bpftool", &["-j", "prog", "show"])?;
    let programs: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let newest = programs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("xdpfilt")))
        .max_by_key(|p| p["id"].as_u64())
        .context("no xdp-filter program loaded")?;
    let bytes = newest["bytes_xlated"]
        .as_u64()
        .context("no bytes_xlated for xdp-filter")?;
    Ok(bytes / 8)
}

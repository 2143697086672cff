//! The few bpf(2) commands the benchmark and the differential test need and aya does not wrap:
//! loading a hand-assembled program (and creating the array map one may use),
//! BPF_PROG_TEST_RUN, getting a program by id or a pinned object, and a program's run-time
//! statistics.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

const BPF_MAP_CREATE: u32 = 0;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// The source register of a 64-bit immediate load that names a map by its descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Run XDP test packets as live frames: XDP_TX really transmits them.
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// `union bpf_attr`, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn get_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().unwrap_or_default())
    }
}

fn bpf(command: u32, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for `command`.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            command,
            attr.0.as_mut_ptr(),
            attr.0.len() as u32,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd(raw: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(raw as i32) }
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }
    /// dst = imm
    pub const fn mov_imm(dst: u8, imm: i32) -> Self {
        Self::new(0xb7, dst, 0, 0, imm)
    }
    /// dst = src
    pub const fn mov(dst: u8, src: u8) -> Self {
        Self::new(0xbf, dst, src, 0, 0)
    }
    /// dst = *(u32 *)(src + off)
    pub const fn load_u32(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x61, dst, src, off, 0)
    }
    /// *(u32 *)(dst + off) = src
    pub const fn store_u32(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x63, dst, src, off, 0)
    }
    /// *(u16 *)(dst + off) = src
    pub const fn store_u16(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x6b, dst, src, off, 0)
    }
    /// dst += imm
    pub const fn add_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07, dst, 0, 0, imm)
    }
    /// dst &= imm
    pub const fn and_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x57, dst, 0, 0, imm)
    }
    /// dst ^= imm
    pub const fn xor_imm(dst: u8, imm: i32) -> Self {
        Self::new(0xa7, dst, 0, 0, imm)
    }
    /// if dst > src goto +off
    pub const fn jgt(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x2d, dst, src, off, 0)
    }
    /// if dst != imm goto +off
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x55, dst, 0, off, imm)
    }
    /// if dst == imm goto +off
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x15, dst, 0, off, imm)
    }
    /// dst = the map `map` (a 64-bit immediate load: two instruction slots).
    pub fn load_map(dst: u8, map: &OwnedFd) -> [Self; 2] {
        [
            Self::new(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
            Self::new(0, 0, 0, 0, 0),
        ]
    }
    pub const fn call(helper: i32) -> Self {
        Self::new(0x85, 0, 0, 0, helper)
    }
    pub const fn exit() -> Self {
        Self::new(0x95, 0, 0, 0, 0)
    }
}

/// Helper number of bpf_map_lookup_elem.
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// Helper number of bpf_get_prandom_u32.
pub const HELPER_PRANDOM_U32: i32 = 7;

/// Loads an XDP program from instructions.
pub fn load_xdp(insns: &[Insn]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 1 << 16];
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(raw) => Ok(fd(raw)),
        Err(err) => {
            let log = String::from_utf8_lossy(&log);
            bail!(
                "loading a benchmark program: {err}\n{}",
                log.trim_end_matches('\0')
            )
        }
    }
}

/// Creates an array map of `entries` zeroed values of `value_size` bytes (u32 keys).
pub fn array_map(value_size: u32, entries: u32) -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, BPF_MAP_TYPE_ARRAY)
        .u32(4, 4)
        .u32(8, value_size)
        .u32(12, entries);
    bpf(BPF_MAP_CREATE, &mut attr)
        .map(fd)
        .context("creating an array map")
}

/// The id of the XDP program attached to `iface` in the network namespace `ns`.
pub fn xdp_prog_id(ns: &str, iface: &str) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", iface])
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} link show {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let id = links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {iface} in {ns}"))?;
    u32::try_from(id).context("a program id beyond u32")
}

pub fn prog_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .map(fd)
        .with_context(|| format!("opening program {id}"))
}

/// A program's run-time statistics (counted while `kernel.bpf_stats_enabled` is on): the
/// total ns it ran and how many runs. One syscall on a descriptor already open, so that it
/// can be read between a few thousand runs without disturbing much of what they measure.
pub fn run_stats(prog: &OwnedFd) -> Result<(u64, u64)> {
    // struct bpf_prog_info up to `run_cnt`: `run_time_ns` at byte 192, `run_cnt` at 200.
    let mut info = [0u64; 26];
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(4, std::mem::size_of_val(&info) as u32)
        .u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok((info[24], info[25]))
}

/// Opens a pinned map or program.
pub fn obj_get(path: &std::path::Path) -> Result<OwnedFd> {
    let path_c = CString::new(path.as_os_str().as_encoded_bytes()).context("pin path")?;
    let mut attr = Attr::new();
    attr.u64(0, path_c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut attr)
        .map(fd)
        .with_context(|| format!("opening {}", path.display()))
}

/// Pins a program (or map) at `path` in bpffs.
pub fn obj_pin(object: &OwnedFd, path: &std::path::Path) -> Result<()> {
    let path_c = CString::new(path.as_os_str().as_encoded_bytes()).context("pin path")?;
    let mut attr = Attr::new();
    attr.u64(0, path_c.as_ptr() as u64)
        .u32(8, object.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)
        .map(drop)
        .with_context(|| format!("pinning at {}", path.display()))
}

/// What one BPF_PROG_TEST_RUN reported.
pub struct TestRun {
    pub retval: u32,
    /// Average nanoseconds per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs `prog` on `data` `repeat` times. With live frames, `ingress_ifindex` names the
/// interface XDP_TX sends out of.
pub fn test_run(
    prog: &OwnedFd,
    data: &[u8],
    repeat: u32,
    live_frames: Option<u32>,
) -> Result<TestRun> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u32; 6];
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, data.len() as u32)
        .u64(16, data.as_ptr() as u64)
        .u32(32, repeat);
    if let Some(ifindex) = live_frames {
        ctx[1] = data.len() as u32;
        ctx[3] = ifindex;
        attr.u32(40, std::mem::size_of_val(&ctx) as u32)
            .u64(48, ctx.as_ptr() as u64)
            .u32(64, BPF_F_TEST_XDP_LIVE_FRAMES);
    }
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok(TestRun {
        retval: attr.get_u32(4),
        duration_ns: attr.get_u32(36),
    })
}

/// Runs `prog` once on `data` and copies the frame as the program left it into `out`
/// (adjusted head and tail included). Returns the XDP action and the output length.
pub fn run_once(prog: impl AsFd, data: &[u8], out: &mut [u8]) -> Result<(u32, usize)> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_fd().as_raw_fd() as u32)
        .u32(8, data.len() as u32)
        .u32(12, out.len() as u32)
        .u64(16, data.as_ptr() as u64)
        .u64(24, out.as_mut_ptr() as u64)
        .u32(32, 1);
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    let out_len = (attr.get_u32(12) as usize).min(out.len());
    Ok((attr.get_u32(4), out_len))
}

/// An XDP program that passes everything: the floor every cost is measured above.
pub fn empty_program() -> Result<OwnedFd> {
    load_xdp(&[Insn::mov_imm(0, XDP_PASS as i32), Insn::exit()])
}

/// An XDP program that drops everything: the throughput ceiling.
pub fn drop_program() -> Result<OwnedFd> {
    load_xdp(&[Insn::mov_imm(0, XDP_DROP as i32), Insn::exit()])
}

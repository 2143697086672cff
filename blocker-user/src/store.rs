//! Bans and the allowlist: the state database and the kernel maps, changed together under the
//! pin directory lock. The database is the truth: a change is committed there first, then
//! applied to the maps, which are brought from what they really hold; a map that refuses a
//! change (full) gets all of the command's changes undone, in the maps and the database. A
//! crash between the two is healed by the next writer or `load`, which reconcile the maps.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapError};
use blocker_common::{
    AllowValue, BanValue, Rule, RuleKind, ALLOW_PRESENT, BAN_PERMANENT, LIST_ALLOW_V4,
    LIST_ALLOW_V6, LIST_BAN_V4, LIST_BAN_V6, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BAN_V4, MAP_BAN_V6,
    MAP_RULES,
};
use ipnet::IpNet;
use jiff::Timestamp;

use crate::{
    addr::{v4_key, v6_key},
    clock::Now,
    dynamic,
    pins::{DirLock, PinDir},
    rules::{RuleSpec, RuleTable},
    state::{last_good_path, Bans, Entry, Origin, State},
    trie::Trie,
    Error, Result,
};

/// What the kernel maps should hold for a state: each ban with its effective expiry, and the
/// allowlist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelImage {
    pub bans: HashMap<IpNet, u32>,
    pub allow: BTreeSet<IpNet>,
}

/// The expiry a ban is stored with in the kernel: the latest among itself and every ban that
/// covers it. The kernel's longest-prefix match only sees the most specific entry, so without
/// this a short ban inside a permanent range would open a hole in the range when it expired.
/// Expiries are CLOCK_BOOTTIME seconds; already-expired bans keep their (past) second so an
/// image of an older state matches what was written for it.
pub fn kernel_image(state: &State, now: &Now) -> KernelImage {
    let mut sweep = CoveringSweep::default();
    let bans = state
        .bans
        .iter()
        .map(|(net, entry)| {
            let (expiry, _) = sweep.visit(*net, own_expiry(entry.expires_at, now), false);
            (*net, expiry)
        })
        .collect();
    KernelImage {
        bans,
        allow: state.allow.keys().copied().collect(),
    }
}

/// The kernel expiry of a ban by itself (before covering bans are considered).
pub fn own_expiry(expires_at: Option<Timestamp>, now: &Now) -> u32 {
    match expires_at {
        None => BAN_PERMANENT,
        Some(expiry) => now.boot_seconds_at(expiry).unwrap_or(1),
    }
}

/// Gives bans visited in address order (family, then first address, then prefix length, as
/// `IpNet` sorts and the database's range index reads: a covering prefix before the prefixes
/// inside it) the kernel expiry [`kernel_image`] describes, holding only the chain of bans
/// that cover the current one, so a million bans stream through it.
#[derive(Default)]
pub struct CoveringSweep {
    /// The bans covering the current one, outermost first: kernel expiry, and whether it or
    /// a ban covering it is marked.
    covering: Vec<(IpNet, u32, bool)>,
}

impl CoveringSweep {
    /// The kernel expiry of `net`, whose own expiry is `own`, and whether `net` or a ban
    /// covering it is marked (a changed ban changes the kernel expiry of the bans inside it).
    pub fn visit(&mut self, net: IpNet, own: u32, marked: bool) -> (u32, bool) {
        while self
            .covering
            .last()
            .is_some_and(|(outer, _, _)| !outer.contains(&net))
        {
            self.covering.pop();
        }
        let (expiry, marked) = match self.covering.last() {
            Some(&(_, outer, outer_marked)) => {
                let expiry = if outer == BAN_PERMANENT || own == BAN_PERMANENT {
                    BAN_PERMANENT
                } else {
                    outer.max(own)
                };
                (expiry, marked || outer_marked)
            }
            None => (own, marked),
        };
        self.covering.push((net, expiry, marked));
        (expiry, marked)
    }
}

/// Which stored bans a sync writes again, asked in address order: those `changed` (sorted)
/// wrote, and those inside a prefix `removed`, whose kernel expiry may have been that ban's
/// (the bans inside a changed one the sweep finds itself).
fn written_again<'a>(
    changed: &'a [IpNet],
    removed: &[IpNet],
) -> impl FnMut(&IpNet) -> bool + Send + 'a {
    let lifted: HashSet<IpNet> = removed.iter().copied().collect();
    let mut lengths: Vec<(bool, u8)> = removed
        .iter()
        .map(|net| (net.addr().is_ipv4(), net.prefix_len()))
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let inside_lifted = move |net: &IpNet| {
        lengths.iter().any(|&(v4, len)| {
            v4 == net.addr().is_ipv4()
                && len < net.prefix_len()
                && IpNet::new(net.addr(), len).is_ok_and(|outer| lifted.contains(&outer.trunc()))
        })
    };
    // The pass visits bans in the order `changed` is sorted in: the next one is mostly the
    // one after the last found, and a search finds the others.
    let mut next = 0;
    move |net: &IpNet| {
        let found = if changed.get(next) == Some(net) {
            next += 1;
            true
        } else {
            let (found, at) = match changed.binary_search(net) {
                Ok(at) => (true, at + 1),
                Err(at) => (false, at),
            };
            next = at;
            found
        };
        found || inside_lifted(net)
    }
}

/// Bans the database reader hands the map writer at a time.
const WRITE_BATCH: usize = 4096;

/// What stops the database reader of [`Maps::write_stored_bans`] when the writer gave up
/// (the writer's error is the one reported).
fn writer_stopped() -> Error {
    Error::io("handing bans to the map writer")(std::io::Error::other("the writer stopped"))
}

impl KernelImage {
    /// Takes the expiries of `wanted` for bans whose kernel expiry means the same: within a
    /// second (the wall-to-boot conversion rounds, and the two clocks drift apart slowly), or
    /// both past. Only real differences are then written.
    fn matched_to(mut self, wanted: &KernelImage, now: &Now) -> Self {
        let boot_now = now.boot.as_secs();
        let past = |expiry: u32| expiry != BAN_PERMANENT && u64::from(expiry) <= boot_now;
        for (net, expiry) in &mut self.bans {
            if let Some(&want) = wanted.bans.get(net) {
                let close = want != BAN_PERMANENT
                    && *expiry != BAN_PERMANENT
                    && want.abs_diff(*expiry) <= 1;
                if close || (past(want) && past(*expiry)) {
                    *expiry = want;
                }
            }
        }
        self
    }

    /// The `LIST_*` bits of the tries this image puts entries in.
    pub fn lists(&self) -> u32 {
        let v4 = |net: &IpNet| net.addr().is_ipv4();
        let mut bits = 0;
        if self.allow.iter().any(v4) {
            bits |= LIST_ALLOW_V4;
        }
        if self.allow.iter().any(|net| !v4(net)) {
            bits |= LIST_ALLOW_V6;
        }
        if self.bans.keys().any(v4) {
            bits |= LIST_BAN_V4;
        }
        if self.bans.keys().any(|net| !v4(net)) {
            bits |= LIST_BAN_V6;
        }
        bits
    }
}

/// An image that makes [`Maps::apply`] towards `target` write every entry of `target` and
/// remove every prefix of `stale_bans` and `stale_allow` that `target` lacks, whatever the
/// maps hold (their values are not read).
fn overwriting(
    target: &KernelImage,
    stale_bans: impl Iterator<Item = IpNet>,
    stale_allow: impl Iterator<Item = IpNet>,
) -> KernelImage {
    /// Never written: so every entry of the target differs from it.
    const UNKNOWN: u32 = 0;
    KernelImage {
        bans: stale_bans
            .filter(|net| !target.bans.contains_key(net))
            .map(|net| (net, UNKNOWN))
            .collect(),
        allow: stale_allow
            .filter(|net| !target.allow.contains(net))
            .collect(),
    }
}

/// The four LPM tries, opened from their pins.
pub struct Maps {
    ban_v4: Trie<[u8; 4], BanValue>,
    ban_v6: Trie<[u8; 16], BanValue>,
    allow_v4: Trie<[u8; 4], AllowValue>,
    allow_v6: Trie<[u8; 16], AllowValue>,
}

/// One change to a map, and how to undo it.
enum Change {
    Ban(IpNet, Option<u32>),
    Allow(IpNet, bool),
}

impl Maps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            ban_v4: Trie::open(pins, MAP_BAN_V4)?,
            ban_v6: Trie::open(pins, MAP_BAN_V6)?,
            allow_v4: Trie::open(pins, MAP_ALLOW_V4)?,
            allow_v6: Trie::open(pins, MAP_ALLOW_V6)?,
        })
    }

    /// What the maps really hold.
    pub fn dump(&self) -> Result<KernelImage> {
        let mut image = KernelImage::default();
        for (len, addr, value) in self.ban_v4.entries()? {
            image
                .bans
                .insert(net(Ipv4Addr::from(addr).into(), len)?, value.expires_at_s);
        }
        for (len, addr, value) in self.ban_v6.entries()? {
            image
                .bans
                .insert(net(Ipv6Addr::from(addr).into(), len)?, value.expires_at_s);
        }
        for (len, addr, _) in self.allow_v4.entries()? {
            image.allow.insert(net(Ipv4Addr::from(addr).into(), len)?);
        }
        for (len, addr, _) in self.allow_v6.entries()? {
            image.allow.insert(net(Ipv6Addr::from(addr).into(), len)?);
        }
        Ok(image)
    }

    /// Whether a longest-prefix lookup of `net` in the bans (`ban`) or allowlist trie finds
    /// an entry: `net` itself or a prefix covering it.
    fn holds(&self, net: &IpNet, ban: bool) -> Result<bool> {
        let found = |result: std::result::Result<(), MapError>, name: &str| match result {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(err) => Err(Error::Map {
                context: format!("reading map {name}"),
                source: err,
            }),
        };
        match (net, ban) {
            (IpNet::V4(v4), true) => found(self.ban_v4.lookup(v4_key(v4)), self.ban_v4.name),
            (IpNet::V6(v6), true) => found(self.ban_v6.lookup(v6_key(v6)), self.ban_v6.name),
            (IpNet::V4(v4), false) => found(self.allow_v4.lookup(v4_key(v4)), self.allow_v4.name),
            (IpNet::V6(v6), false) => found(self.allow_v6.lookup(v6_key(v6)), self.allow_v6.name),
        }
    }

    /// Sets a ban's kernel expiry, or removes it with `None`.
    fn set_ban(&mut self, net: &IpNet, expiry: Option<u32>) -> Result<()> {
        let value = |expires_at_s| BanValue { expires_at_s };
        match (net, expiry) {
            (IpNet::V4(v4), Some(e)) => self.ban_v4.insert(v4_key(v4), value(e)),
            (IpNet::V6(v6), Some(e)) => self.ban_v6.insert(v6_key(v6), value(e)),
            (IpNet::V4(v4), None) => self.ban_v4.remove(v4_key(v4)),
            (IpNet::V6(v6), None) => self.ban_v6.remove(v6_key(v6)),
        }
    }

    /// Sets the kernel expiries of many bans, with one batch update per family and
    /// [`crate::trie::UPDATE_BATCH`] entries.
    fn set_bans(&mut self, bans: &[(IpNet, u32)]) -> Result<()> {
        let value = |expires_at_s| BanValue { expires_at_s };
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (net, expiry) in bans {
            match net {
                IpNet::V4(net) => v4.push((v4_key(net), value(*expiry))),
                IpNet::V6(net) => v6.push((v6_key(net), value(*expiry))),
            }
        }
        self.ban_v4.insert_all(&v4)?;
        self.ban_v6.insert_all(&v6)
    }

    fn set_allow(&mut self, net: &IpNet, present: bool) -> Result<()> {
        match (net, present) {
            (IpNet::V4(v4), true) => self.allow_v4.insert(v4_key(v4), ALLOW_PRESENT),
            (IpNet::V6(v6), true) => self.allow_v6.insert(v6_key(v6), ALLOW_PRESENT),
            (IpNet::V4(v4), false) => self.allow_v4.remove(v4_key(v4)),
            (IpNet::V6(v6), false) => self.allow_v6.remove(v6_key(v6)),
        }
    }

    /// Writes the bans stored in `state_path` that `marked` picks, and the bans inside them
    /// (a ban's kernel expiry depends on the bans covering it), in one ordered pass over the
    /// database through a [`CoveringSweep`]. Returns the stored bans in force at the wall
    /// clock's `now` (bans it calls expired are written all the same: the kernel, on the boot
    /// clock, does not enforce them) and the `LIST_*` bits of the tries they are in.
    fn write_stored_bans(
        &mut self,
        state_path: &Path,
        now: &Now,
        mut marked: impl FnMut(&IpNet) -> bool + Send,
    ) -> Result<(usize, u32)> {
        // The database is read and swept on a thread of its own while this one writes the
        // maps: for a million bans each side takes about half of the pass, and they overlap.
        let (batches, to_write) = std::sync::mpsc::sync_channel::<Vec<(IpNet, u32)>>(4);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut sweep = CoveringSweep::default();
                let (mut in_force, mut lists) = (0, 0);
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                crate::state::each_ban(state_path, |net, expires_at| {
                    let own = own_expiry(expires_at, now);
                    if let (expiry, true) = sweep.visit(net, own, marked(&net)) {
                        batch.push((net, expiry));
                        if batch.len() == WRITE_BATCH {
                            let full =
                                std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
                            batches.send(full).map_err(|_| writer_stopped())?;
                        }
                    }
                    if expires_at.is_none_or(|at| at > now.wall) {
                        in_force += 1;
                    }
                    lists |= if net.addr().is_ipv4() {
                        LIST_BAN_V4
                    } else {
                        LIST_BAN_V6
                    };
                    Ok(())
                })?;
                batches.send(batch).map_err(|_| writer_stopped())?;
                Ok((in_force, lists))
            });
            // Ends when the reader is done; a refused write drops `to_write`, which stops it.
            let written = to_write
                .into_iter()
                .try_for_each(|batch| self.set_bans(&batch));
            let read = reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            written.and(read)
        })
    }

    /// Brings the maps from `before` to `after`, changing only what differs. On failure every
    /// change already made is undone, so the maps match `before` again.
    pub fn apply(
        &mut self,
        before: &KernelImage,
        after: &KernelImage,
        mut progress: impl FnMut(),
    ) -> Result<()> {
        let mut undo: Vec<Change> = Vec::new();
        let result = self.apply_recording(before, after, &mut undo, &mut progress);
        if result.is_err() {
            for change in undo.into_iter().rev() {
                // Best effort: the original error is the one worth reporting.
                let _ = match change {
                    Change::Ban(net, expiry) => self.set_ban(&net, expiry),
                    Change::Allow(net, present) => self.set_allow(&net, present),
                };
            }
        }
        result
    }

    fn apply_recording(
        &mut self,
        before: &KernelImage,
        after: &KernelImage,
        undo: &mut Vec<Change>,
        progress: &mut impl FnMut(),
    ) -> Result<()> {
        // Removals first, so a full map has room for what replaces them.
        for net in before
            .bans
            .keys()
            .filter(|net| !after.bans.contains_key(net))
        {
            self.set_ban(net, None)?;
            undo.push(Change::Ban(*net, before.bans.get(net).copied()));
        }
        for net in before.allow.difference(&after.allow) {
            self.set_allow(net, false)?;
            undo.push(Change::Allow(*net, true));
        }
        for (net, expiry) in &after.bans {
            let previous = before.bans.get(net).copied();
            if previous != Some(*expiry) {
                self.set_ban(net, Some(*expiry))?;
                undo.push(Change::Ban(*net, previous));
            }
            progress();
        }
        for net in after.allow.difference(&before.allow) {
            self.set_allow(net, true)?;
            undo.push(Change::Allow(*net, false));
            progress();
        }
        Ok(())
    }
}

/// The rule slots as the kernel holds them.
fn read_rules(pins: &PinDir) -> Result<Vec<Rule>> {
    let context = format!("reading map {MAP_RULES}");
    let rules: Array<_, Rule> = Array::try_from(Map::Array(pins.open_map(MAP_RULES)?))
        .map_err(Error::map(context.clone()))?;
    rules
        .iter()
        .map(|rule| rule.map_err(Error::map(context.clone())))
        .collect()
}

/// The prefix of an LPM trie key; the kernel refuses keys longer than the address.
fn net(addr: IpAddr, len: u8) -> Result<IpNet> {
    IpNet::new(addr, len).map_err(|_| {
        Error::Unsupported(format!(
            "the kernel holds a key {addr}/{len} blocker never writes"
        ))
    })
}

/// A writer's session: the pin directory lock, the maps and the state, changed together.
pub struct Store {
    /// `None` when the caller holds the lock.
    _lock: Option<DirLock>,
    pins: PinDir,
    /// The maps were just created: the rule table must be written whole.
    fresh_maps: bool,
    maps: Maps,
    state_path: PathBuf,
    pub state: State,
    /// The state as it was when opened.
    before: State,
    /// What the bans and allowlist maps held when opened: changes are made from this. Empty
    /// for a scoped session, which does not read the maps.
    kernel: KernelImage,
    /// A session opened for a few prefixes ([`Store::open_scoped`]): only they, and the bans
    /// their kernel expiries depend on, were read, and only they are written.
    scope: Option<Vec<IpNet>>,
    /// The rule slots as the kernel held them when opened.
    kernel_rules: Vec<Rule>,
    pub now: Now,
    /// Who makes the changes, for the history.
    pub origin: Origin,
    /// `LIST_*` bits of bans written to the maps outside the state (streamed at load).
    streamed_lists: u32,
}

impl Store {
    /// Locks the pin directory and reads the state. Fails with the "run blocker load" hint
    /// when nothing is loaded.
    pub fn open(pins: &PinDir, state_path: &Path) -> Result<Self> {
        pins.require_loaded()?;
        let lock = pins.lock()?;
        let mut store = Self::open_locked(pins, state_path)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Like [`Store::open`] for a change of the bans and allowlist entries `touched` (and
    /// offenses of those prefixes): reads only the rows they need, by index, and does not
    /// read the maps, so its cost does not grow with the number of stored entries. The maps
    /// are written for those prefixes whatever they held (which heals what a crash between
    /// a commit and the maps left); `load` and the daemon's start reconcile everything.
    pub fn open_scoped(pins: &PinDir, state_path: &Path, touched: &[IpNet]) -> Result<Self> {
        pins.require_loaded()?;
        let lock = pins.lock()?;
        Self::settle_locked(pins, state_path)?;
        let state = State::read_scope(state_path, touched)?;
        let mut store = match state {
            // A missing database is checked against the maps, as a full session does.
            None => Self::with_state(pins, state_path, None)?,
            Some(state) => Self::scoped(pins, state_path, state, touched)?,
        };
        store._lock = Some(lock);
        Ok(store)
    }

    /// A session of `state`, read for the prefixes `touched`; the caller holds the lock.
    fn scoped(pins: &PinDir, state_path: &Path, state: State, touched: &[IpNet]) -> Result<Self> {
        Ok(Self {
            _lock: None,
            pins: pins.clone(),
            fresh_maps: false,
            maps: Maps::open(pins)?,
            state_path: state_path.to_path_buf(),
            before: state.clone(),
            state,
            kernel: KernelImage::default(),
            scope: Some(touched.to_vec()),
            kernel_rules: read_rules(pins)?,
            now: Now::read(),
            origin: Origin::local("cli"),
            streamed_lists: 0,
        })
    }

    /// Removes the bans due by this clock from the database and the maps (as source
    /// `expiry`), in a session scoped to them; returns their prefixes. The daemon does so every
    /// second; every writer does so first, so that without the daemon ended bans do not stay
    /// stored and fill the maps. One query of the expiry index when nothing is due. The
    /// caller holds the lock.
    fn expire_due_locked(pins: &PinDir, state_path: &Path) -> Result<Vec<IpNet>> {
        let now = Timestamp::now();
        if crate::state::next_expiry(state_path)?.is_none_or(|due| due > now) {
            return Ok(Vec::new());
        }
        let due = crate::state::expired_bans(state_path, now)?;
        let Some(state) = State::read_scope(state_path, &due)? else {
            return Ok(Vec::new());
        };
        let mut store = Self::scoped(pins, state_path, state, &due)?;
        store.origin = Origin::local("expiry");
        let expired: Vec<IpNet> = store
            .state
            .bans
            .iter()
            .filter(|(_, entry)| entry.is_expired(store.now.wall))
            .map(|(net, _)| *net)
            .collect();
        // `commit` prunes the expired entries it read from the maps and the database.
        store.commit(|| {})?;
        Ok(expired)
    }

    /// [`Store::expire_due_locked`], taking the lock when something is due (the daemon's
    /// expiry, every second).
    pub fn expire_due(pins: &PinDir, state_path: &Path) -> Result<Vec<IpNet>> {
        if crate::state::next_expiry(state_path)?.is_none_or(|due| due > Timestamp::now()) {
            return Ok(Vec::new());
        }
        pins.require_loaded()?;
        let _lock = pins.lock()?;
        Self::settle_locked(pins, state_path)
    }

    /// What every writer does first, holding the lock: brings the maps to the database if a
    /// writer before it left them marked pending ([`Store::heal`]), then removes the bans
    /// due ([`Store::expire_due_locked`]), whose prefixes it returns.
    fn settle_locked(pins: &PinDir, state_path: &Path) -> Result<Vec<IpNet>> {
        if pins.maps_pending() {
            Self::heal(pins, state_path)?;
        }
        Self::expire_due_locked(pins, state_path)
    }

    /// Brings every map to the database, for a writer that found the maps marked pending: a
    /// writer before it was stopped between its commit and its maps, or `load` kept bans a
    /// wall clock that may have been wrong called expired. What this clock calls expired is
    /// pruned, as the daemon's expiry does. The caller holds the lock.
    fn heal(pins: &PinDir, state_path: &Path) -> Result<()> {
        tracing::info!("the maps may be behind the database: bringing every map to it");
        let mut full = Self::open_locked(pins, state_path)?;
        full.origin = Origin::local("expiry");
        full.state.prune_expired(full.now.wall);
        full.write(|| {}, true)
    }

    /// Whether the kernel may hold `net` in the bans (`ban`) or allowlist trie though the
    /// state does not: for a scoped session, a longest-prefix lookup that finds an entry no
    /// stored prefix covering `net` explains.
    fn kernel_holds(&self, net: &IpNet, ban: bool) -> bool {
        if self.scope.is_none() {
            return if ban {
                self.kernel.bans.contains_key(net)
            } else {
                self.kernel.allow.contains(net)
            };
        }
        let stored = if ban {
            &self.before.bans
        } else {
            &self.before.allow
        };
        let covered = stored
            .keys()
            .any(|other| other != net && other.contains(net));
        // An unreadable map: say nothing rather than "was not banned".
        self.maps.holds(net, ban).unwrap_or(true) && !covered
    }

    /// Like [`Store::open`], for a caller that already holds the lock. A missing state file
    /// is an empty state only while the maps are empty: otherwise writing would wipe them.
    fn open_locked(pins: &PinDir, state_path: &Path) -> Result<Self> {
        let state = State::read(state_path)?;
        Self::with_state(pins, state_path, state)
    }

    fn with_state(pins: &PinDir, state_path: &Path, state: Option<State>) -> Result<Self> {
        let maps = Maps::open(pins)?;
        let kernel = maps.dump()?;
        let kernel_rules = read_rules(pins)?;
        let state = match state {
            Some(state) => state,
            None => {
                let rules = kernel_rules
                    .iter()
                    .filter(|rule| rule.kind != RuleKind::Empty as u8)
                    .count();
                let entries = kernel.bans.len() + kernel.allow.len();
                if entries + rules > 0 {
                    return Err(Error::StateMissing {
                        path: state_path.to_path_buf(),
                        pin_dir: pins.path.clone(),
                        entries,
                        rules,
                        last_good: last_good_path(state_path),
                    });
                }
                State::default()
            }
        };
        Ok(Self {
            _lock: None,
            pins: pins.clone(),
            fresh_maps: false,
            maps,
            state_path: state_path.to_path_buf(),
            before: state.clone(),
            state,
            kernel,
            scope: None,
            kernel_rules,
            now: Now::read(),
            origin: Origin::local("cli"),
            streamed_lists: 0,
        })
    }

    /// How many bans the v4 (`v4`) or v6 map holds at most.
    pub fn ban_capacity(&self, v4: bool) -> u32 {
        if v4 {
            self.maps.ban_v4.capacity
        } else {
            self.maps.ban_v6.capacity
        }
    }

    /// Brings the maps to the database for the bans `changed` (sorted) wrote (and the bans
    /// inside them, whose kernel expiry they may change) in one ordered pass over the stored
    /// bans, removes `removed` from them, and sets which tries the XDP program looks in. For
    /// writers that committed to the database directly (a bulk import).
    pub fn sync_bans(&mut self, changed: &[IpNet], removed: &[IpNet]) -> Result<()> {
        let synced = self.write_synced_bans(changed, removed);
        if synced.is_err() {
            // Some bans may be in the tries already: no blacklist stamp may outlive them.
            let _ = dynamic::bump_lists_generation(&self.pins);
        }
        synced
    }

    /// Puts `present` in the allowlist tries and takes `absent` out, then sets which tries
    /// the XDP program looks in (which bumps the lists generation). For writers that committed
    /// to the database directly (an import's allowlist entries).
    pub fn sync_allows(&mut self, present: &[IpNet], absent: &[IpNet]) -> Result<()> {
        if present.is_empty() && absent.is_empty() {
            return Ok(());
        }
        let written = present
            .iter()
            .map(|net| (net, true))
            .chain(absent.iter().map(|net| (net, false)))
            .try_for_each(|(net, present)| self.maps.set_allow(net, present));
        let lists = crate::state::lists_in_use(&self.state_path);
        let settings = lists.and_then(|lists| {
            dynamic::write_settings(&self.pins, self.state.rules.as_ref(), lists, false)
        });
        written.and(settings)
    }

    fn write_synced_bans(&mut self, changed: &[IpNet], removed: &[IpNet]) -> Result<()> {
        for net in removed {
            self.maps.set_ban(net, None)?;
        }
        self.maps.write_stored_bans(
            &self.state_path,
            &self.now,
            written_again(changed, removed),
        )?;
        let lists = crate::state::lists_in_use(&self.state_path)?;
        dynamic::write_settings(&self.pins, self.state.rules.as_ref(), lists, false)
    }

    /// Adds or replaces bans. A ban that already exists keeps its creation time.
    pub fn ban(&mut self, nets: &[IpNet], expires_at: Option<Timestamp>, reason: Option<&str>) {
        for net in nets {
            let created_at = self
                .state
                .bans
                .get(net)
                .filter(|entry| !entry.is_expired(self.now.wall))
                .map_or(self.now.wall, |entry| entry.created_at);
            let entry = Entry {
                reason: reason.map(str::to_string),
                created_at,
                expires_at,
            };
            self.state.bans.insert(*net, entry);
        }
    }

    /// Bans `net` until `expires_at` unless a ban already in force outlasts that (a permanent
    /// ban is never shortened by an offense).
    pub fn ban_at_least(&mut self, net: IpNet, expires_at: Option<Timestamp>, reason: &str) {
        let outlasts = self.state.bans.get(&net).is_some_and(|existing| {
            !existing.is_expired(self.now.wall)
                && match (existing.expires_at, expires_at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(old), Some(new)) => old >= new,
                }
        });
        if !outlasts {
            self.ban(&[net], expires_at, Some(reason));
        }
    }

    /// Counts bans issued from `source`, for metrics.
    pub fn count_issued(&mut self, source: &str, count: u64) {
        *self.state.issued.entry(source.to_string()).or_default() += count;
    }

    /// Removes bans; returns the prefixes that were banned neither in the state nor in the
    /// kernel (an entry only the kernel has is removed all the same by [`Store::commit`]).
    pub fn unban(&mut self, nets: &[IpNet]) -> Vec<IpNet> {
        nets.iter()
            .filter(|net| self.state.bans.remove(net).is_none() && !self.kernel_holds(net, true))
            .copied()
            .collect()
    }

    pub fn allow(&mut self, nets: &[IpNet], reason: Option<&str>) {
        for net in nets {
            let created_at = self
                .state
                .allow
                .get(net)
                .map_or(self.now.wall, |entry| entry.created_at);
            let entry = Entry {
                reason: reason.map(str::to_string),
                created_at,
                expires_at: None,
            };
            self.state.allow.insert(*net, entry);
        }
    }

    /// Removes allowlist entries; returns the prefixes that were on it neither in the state
    /// nor in the kernel.
    pub fn disallow(&mut self, nets: &[IpNet]) -> Vec<IpNet> {
        nets.iter()
            .filter(|net| self.state.allow.remove(net).is_none() && !self.kernel_holds(net, false))
            .copied()
            .collect()
    }

    /// Adds a rule, or replaces the rule of the same name; returns its slot.
    pub fn upsert_rule(&mut self, spec: RuleSpec) -> Result<u32> {
        self.state
            .rules
            .get_or_insert_with(RuleTable::default)
            .upsert(spec)
            .map_err(Error::InvalidRule)
    }

    pub fn remove_rule(&mut self, name: &str) -> Result<u32> {
        self.state
            .rules
            .get_or_insert_with(RuleTable::default)
            .remove(name)
            .ok_or_else(|| Error::NoSuchRule(name.to_string()))
    }

    /// Writes the changes to the maps, then the state file. Expired entries are dropped from
    /// both on the way.
    pub fn commit(mut self, progress: impl FnMut()) -> Result<()> {
        self.state.prune_expired(self.now.wall);
        self.write(progress, true)
    }

    /// [`Store::commit`], then removes the dynamic blacklist's entries that overlap `nets`
    /// before the lock is let go (the removal's generation bump is a read-modify-write of the
    /// settings another writer must not interleave with); returns the prefixes removed.
    pub fn commit_unban(mut self, nets: &[IpNet]) -> Result<Vec<IpNet>> {
        self.state.prune_expired(self.now.wall);
        self.write(|| {}, true)?;
        dynamic::remove_blacklisted(&self.pins, dynamic::Doomed::Overlapping(nets))
    }

    /// Brings the maps from what they hold to the state, then saves the state (if `save`).
    fn write(&mut self, progress: impl FnMut(), save: bool) -> Result<()> {
        let (before, after) = match &self.scope {
            None => {
                let after = kernel_image(&self.state, &self.now);
                let before = std::mem::take(&mut self.kernel).matched_to(&after, &self.now);
                (before, after)
            }
            Some(touched) => {
                let mut after = kernel_image(&self.state, &self.now);
                after.allow.retain(|net| touched.contains(net));
                let stale_bans = self.before.bans.keys().chain(touched).copied();
                (
                    overwriting(&after, stale_bans, touched.iter().copied()),
                    after,
                )
            }
        };
        let kernel_rules_differ = match &self.state.rules {
            Some(rules) => {
                rules
                    .compile()
                    .map_err(Error::InvalidRule)?
                    .slots
                    .as_slice()
                    != self.kernel_rules.as_slice()
            }
            None => false,
        };
        let rules_changed =
            self.fresh_maps || kernel_rules_differ || self.state.rules != self.before.rules;
        if let Some(rules) = self.state.rules.as_ref().filter(|_| rules_changed) {
            if !self.fresh_maps {
                // The counters of the slots whose rule changes start over: what they counted
                // stays in the issued total, which a counter must never take back.
                let previous = self.before.rules.as_ref();
                let restarted: u64 = dynamic::rule_stats(&self.pins)?
                    .iter()
                    .enumerate()
                    .filter(|(slot, _)| dynamic::slot_starts_over(previous, rules, *slot))
                    .map(|(_, stats)| stats.blacklisted)
                    .sum();
                if restarted > 0 {
                    self.count_issued("rule", restarted);
                }
            }
        }
        // The database first: once committed, a crash before the maps follow is healed by
        // the next writer, which finds the mark, or by `load`, which bring the maps to the
        // database.
        let was_pending = self.pins.maps_pending();
        if save {
            self.pins.mark_maps_pending()?;
        }
        let written = if save {
            match self
                .state
                .save_changes(&self.state_path, &self.before, &self.origin)
            {
                Ok(written) => Some(written),
                Err(err) => {
                    // Nothing was stored: the mark is only this session's to take back.
                    if !was_pending {
                        let _ = self.pins.clear_maps_pending();
                    }
                    return Err(err);
                }
            }
        } else {
            None
        };
        let lists = match (&self.scope, save) {
            (Some(_), true) => crate::state::lists_in_use(&self.state_path),
            _ => Ok(after.lists() | self.streamed_lists),
        };
        let result = lists.and_then(|lists| {
            self.maps.apply(&before, &after, progress)?;
            let kernel = match &self.state.rules {
                Some(rules) if rules_changed => {
                    let previous = self.before.rules.as_ref().filter(|_| !self.fresh_maps);
                    dynamic::write_rules(&self.pins, previous, rules)
                }
                _ => Ok(()),
            }
            .and_then(|()| {
                dynamic::write_settings(&self.pins, self.state.rules.as_ref(), lists, rules_changed)
            });
            if kernel.is_err() {
                let _ = self.maps.apply(&after, &before, || {});
            }
            kernel
        });
        if result.is_err() {
            if let Some(touched) = &self.scope {
                // The kernel's values were not read: write back what the state held.
                let held = kernel_image(&self.before, &self.now);
                let stale_bans = after.bans.keys().chain(touched).copied();
                let stale = overwriting(&held, stale_bans, touched.iter().copied());
                let _ = self.maps.apply(&stale, &held, || {});
            }
        }
        if let Err(err) = result {
            // Keep kernel and database in agreement: the command reports failure, so undo it.
            if rules_changed && !self.fresh_maps {
                if let Some(rules) = &self.before.rules {
                    let _ = dynamic::write_rules(&self.pins, None, rules);
                }
            }
            if let Some(written) = written {
                if let Err(undo) = self.state.undo(&self.state_path, &self.before, &written) {
                    tracing::error!("undoing the state change: {undo}");
                }
            }
            let lists_before = match &self.scope {
                // A scoped session holds only the prefixes it touched, so `before.lists()`
                // would switch whole tries off: ask the database, restored just above, and
                // if it cannot say keep every trie looked up (an empty trie costs a lookup; a
                // switched-off one would stop enforcing it).
                Some(_) => crate::state::lists_in_use(&self.state_path)
                    .unwrap_or(LIST_ALLOW_V4 | LIST_ALLOW_V6 | LIST_BAN_V4 | LIST_BAN_V6),
                None => before.lists(),
            };
            let _ = dynamic::write_settings(
                &self.pins,
                self.before.rules.as_ref(),
                lists_before,
                rules_changed,
            );
            // The mark stays: the rollbacks above are best effort.
            return Err(err);
        }
        // A full session brought every map to the database, a scoped one its own prefixes
        // (nothing was pending when it opened: it healed first).
        self.pins.clear_maps_pending()?;
        // The XDP program checks the allowlist first, so these entries no longer drop anything;
        // removing them keeps `list blacklist` to what is in force.
        // The change is stored and enforced: a failure here is no failure of the command.
        let allowed: Vec<IpNet> = after.allow.difference(&before.allow).copied().collect();
        if !allowed.is_empty() {
            match dynamic::remove_blacklisted(&self.pins, dynamic::Doomed::Inside(&allowed)) {
                Ok(removed) => {
                    for net in removed {
                        tracing::info!(
                            "removed {net} from the dynamic blacklist: it is allowed now"
                        );
                    }
                }
                Err(err) => tracing::warn!(
                    "the change is stored, but clearing the dynamic blacklist failed: {err}"
                ),
            }
        }
        Ok(())
    }
}

/// Fills freshly created maps from the state file (after a reboot or an unload), and installs
/// the rules: `config_rules` when given, else the saved ones, else the built-in `ssh` rule.
/// Unchanged rules keep their slot, generation and history ([`RuleTable::replaced_by`]).
/// The caller holds the pin directory lock. Returns the number of bans and allowlist entries
/// restored, or `None` when the maps were not fresh (only the rules were applied).
///
/// Fresh maps mean a boot, when the wall clock may still be wrong: bans it calls expired are
/// kept in the state (the kernel, on the boot clock, does not enforce them), and the next
/// writer prunes them once the clock is right. A state file that cannot be used does not keep
/// the host unprotected: its last good copy is restored instead, loudly, and the damaged file
/// is left as it is (writers refuse it until it is fixed).
pub fn restore(
    pins: &PinDir,
    state_path: &Path,
    fresh: bool,
    config_rules: Option<&[RuleSpec]>,
) -> Result<Option<usize>> {
    // Fresh maps get the bans streamed from the database rather than through a whole-state
    // image: a million bans restore in seconds and little memory.
    let (state, damaged) = if fresh {
        State::read_for_boot(state_path, Bans::Streamed)?
    } else {
        (State::read(state_path)?, None)
    };
    let mut store = Store::with_state(pins, state_path, state)?;
    store.origin = Origin::local("load");
    let saved = store.state.rules.clone().unwrap_or_default();
    match config_rules {
        Some(specs) => {
            store.state.rules = Some(saved.replaced_by(specs).map_err(Error::InvalidRule)?)
        }
        None if store.state.rules.is_none() => {
            store.state.rules =
                Some(RuleTable::from_specs(&[RuleSpec::ssh()]).map_err(Error::InvalidRule)?)
        }
        None => {}
    }
    if !fresh {
        store.commit(|| {})?;
        return Ok(None);
    }
    store.fresh_maps = true;
    let bans_from = match &damaged {
        None => state_path.to_path_buf(),
        Some(_) => last_good_path(state_path),
    };
    // Fresh maps: every stored ban is written.
    let (bans_in_force, ban_lists) =
        store
            .maps
            .write_stored_bans(&bans_from, &store.now, |_| true)?;
    store.streamed_lists = ban_lists;
    let restored = bans_in_force + store.state.allow.len();
    match damaged {
        None => {
            store.write(|| {}, true)?;
            // Bans the wall clock calls expired were kept: the next writer, by a clock then
            // right, prunes them or writes their kernel expiry again.
            if crate::state::summary(state_path)?.bans() > bans_in_force as u64 {
                pins.mark_maps_pending()?;
            }
        }
        Some(damaged) => {
            // The maps get the fallback; the damaged file stays for the operator to see.
            tracing::error!(
                "{damaged}; attaching with the {restored} entries of {} instead",
                bans_from.display()
            );
            store.write(|| {}, false)?;
        }
    }
    Ok(Some(restored))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::Strategy;

    use super::*;

    fn now() -> Now {
        Now {
            wall: Timestamp::from_second(1_000_000).unwrap(),
            boot: Duration::from_secs(5_000),
            mono: Duration::ZERO,
        }
    }

    fn entry(expires_in: Option<i64>) -> Entry {
        Entry {
            reason: None,
            created_at: now().wall,
            expires_at: expires_in.map(|s| Timestamp::from_second(1_000_000 + s).unwrap()),
        }
    }

    fn state(bans: &[(&str, Option<i64>)]) -> State {
        let mut state = State::default();
        for (net, expires_in) in bans {
            state.bans.insert(net.parse().unwrap(), entry(*expires_in));
        }
        state
    }

    fn expiry(image: &KernelImage, net: &str) -> u32 {
        image.bans[&net.parse::<IpNet>().unwrap()]
    }

    #[test]
    fn a_ban_keeps_its_own_expiry_when_nothing_covers_it() {
        let image = kernel_image(
            &state(&[("10.0.0.1/32", Some(60)), ("10.0.0.0/8", None)]),
            &now(),
        );
        assert_eq!(expiry(&image, "10.0.0.0/8"), BAN_PERMANENT);
        let image = kernel_image(&state(&[("10.0.0.1/32", Some(60))]), &now());
        assert_eq!(expiry(&image, "10.0.0.1/32"), 5_060);
    }

    #[test]
    fn a_short_ban_inside_a_longer_one_inherits_the_longer_expiry() {
        let image = kernel_image(
            &state(&[
                ("10.0.0.0/8", None),
                ("10.1.0.0/16", Some(600)),
                ("10.1.2.3/32", Some(60)),
                ("11.1.2.3/32", Some(60)),
                ("2001:db8::/32", Some(900)),
                ("2001:db8::1/128", Some(30)),
            ]),
            &now(),
        );
        assert_eq!(expiry(&image, "10.1.0.0/16"), BAN_PERMANENT);
        assert_eq!(expiry(&image, "10.1.2.3/32"), BAN_PERMANENT);
        assert_eq!(expiry(&image, "11.1.2.3/32"), 5_060);
        assert_eq!(expiry(&image, "2001:db8::1/128"), 5_900);
    }

    #[test]
    fn list_bits_name_the_tries_in_use() {
        let mut image = kernel_image(&state(&[("10.0.0.1/32", None)]), &now());
        assert_eq!(image.lists(), LIST_BAN_V4);
        image.allow.insert("2001:db8::/64".parse().unwrap());
        assert_eq!(image.lists(), LIST_BAN_V4 | LIST_ALLOW_V6);
        assert_eq!(KernelImage::default().lists(), 0);
    }

    #[test]
    fn families_do_not_cover_each_other() {
        let image = kernel_image(&state(&[("::/0", None), ("10.0.0.1/32", Some(60))]), &now());
        assert_eq!(expiry(&image, "10.0.0.1/32"), 5_060);
    }

    #[test]
    fn kernel_expiries_within_a_second_or_both_past_are_not_rewritten() {
        let wanted = kernel_image(
            &state(&[
                ("10.0.0.1/32", Some(60)),
                ("10.0.0.2/32", Some(60)),
                ("10.0.0.3/32", Some(-10)),
                ("10.0.0.4/32", None),
            ]),
            &now(),
        );
        let mut kernel = KernelImage::default();
        for (net, expiry) in [
            ("10.0.0.1/32", 5_059),
            ("10.0.0.2/32", 5_050),
            ("10.0.0.3/32", 4_000),
            ("10.0.0.4/32", 5_060),
            ("10.0.0.5/32", BAN_PERMANENT),
        ] {
            kernel.bans.insert(net.parse().unwrap(), expiry);
        }
        let matched = kernel.matched_to(&wanted, &now());
        assert_eq!(expiry(&matched, "10.0.0.1/32"), 5_060, "rounding");
        assert_eq!(expiry(&matched, "10.0.0.2/32"), 5_050, "a real difference");
        assert_eq!(expiry(&matched, "10.0.0.3/32"), 1, "both past");
        assert_eq!(
            expiry(&matched, "10.0.0.4/32"),
            5_060,
            "permanent is not close"
        );
        assert_eq!(
            expiry(&matched, "10.0.0.5/32"),
            BAN_PERMANENT,
            "an orphan stays"
        );
    }

    proptest::proptest! {
        /// The streaming sweep agrees with the definition: the latest expiry among the ban
        /// and every stored ban containing it.
        #[test]
        fn the_covering_sweep_matches_the_definition(
            bans in proptest::collection::btree_map(
                (0u8..4, 0u8..=2, 0u8..4).prop_map(|(a, len_step, b)| {
                    let len = [8, 16, 24][len_step as usize] + b;
                    IpNet::new(std::net::Ipv4Addr::new(10, a, b, a ^ b).into(), len)
                        .unwrap()
                        .trunc()
                }),
                proptest::option::of(-100i64..1000),
                0..40,
            )
        ) {
            let mut state = State::default();
            for (net, expires_in) in &bans {
                state.bans.insert(*net, entry(*expires_in));
            }
            let image = kernel_image(&state, &now());
            let rank = |expiry: u32| if expiry == BAN_PERMANENT { u64::MAX } else { expiry.into() };
            for net in bans.keys() {
                let wanted = bans
                    .iter()
                    .filter(|(outer, _)| outer.contains(net))
                    .map(|(_, expires_in)| own_expiry(entry(*expires_in).expires_at, &now()))
                    .max_by_key(|expiry| rank(*expiry))
                    .unwrap();
                proptest::prop_assert_eq!(image.bans[net], wanted, "{}", net);
            }
        }
    }

    #[test]
    fn a_sync_writes_again_the_changed_bans_and_those_inside_a_lifted_one() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let changed = nets(&["10.0.0.1/32", "192.0.2.0/24"]);
        let removed = nets(&["10.1.0.0/16", "2001:db8::/32"]);
        let mut again = written_again(&changed, &removed);
        let stored = [
            ("10.0.0.1/32", true),
            ("10.0.0.2/32", false),
            ("10.1.0.0/16", false),
            ("10.1.2.3/32", true),
            ("10.2.0.1/32", false),
            ("192.0.2.0/24", true),
            ("2001:db8:1::/48", true),
            ("2001:db9::1/128", false),
        ];
        for (net, expected) in stored {
            assert_eq!(again(&net.parse().unwrap()), expected, "{net}");
        }
    }

    #[test]
    fn expired_covering_bans_do_not_extend() {
        let image = kernel_image(
            &state(&[("10.0.0.0/8", Some(-10)), ("10.0.0.1/32", Some(60))]),
            &now(),
        );
        assert_eq!(expiry(&image, "10.0.0.1/32"), 5_060);
        assert_eq!(expiry(&image, "10.0.0.0/8"), 1);
    }
}

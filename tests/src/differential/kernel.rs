//! The real XDP program, loaded in-process from the object `blocker` embeds (not attached to
//! any interface, so only the test's frames reach it), with its maps opened for writing the
//! configuration and reading what the program did.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use blocker_common::{
    reject::TokenBucket, AllowValue, BanValue, BlacklistEntry, Counter, History, HistoryKey,
    Reason, Rule, RuleStats, Settings, ShortHistory, SourceKey, SourceKeyV4, FAMILY_V4,
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_BAN_V4, MAP_BAN_V6, MAP_BLACKLIST_V4, MAP_BLACKLIST_V6,
    MAP_COUNTERS, MAP_HISTORY, MAP_HISTORY_LONG, MAP_RULES, MAP_RULE_STATS, MAP_SETTINGS,
    MAX_RULES, PROGRAM_NAME,
};

use crate::{
    bpf,
    model::{histories::Histories, Prefix},
};

/// The program's per-CPU reject token buckets (`reject::TokenBucket`: thousandths of a token,
/// then the time of the last refill), private to the program, read only to resynchronise the
/// model after a divergence.
const MAP_REJECT_TOKENS: &str = "REJECT_TOKENS";
/// The program's global switch of the blocked-packet sample.
const SAMPLE_DROPS: &str = "SAMPLE_DROPS";

/// Capacities of the LRU maps: far above what one stretch of the run fills (the harness
/// clears them regularly), so the kernel never evicts what the model keeps.
const LRU_CAPACITY: u32 = 1 << 16;

pub struct Kernel {
    /// Owns the maps' and the program's descriptors.
    _ebpf: Ebpf,
    program: OwnedFd,
    settings: Array<MapData, Settings>,
    rules: Array<MapData, Rule>,
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    ban_v4: LpmTrie<MapData, [u8; 4], BanValue>,
    ban_v6: LpmTrie<MapData, [u8; 16], BanValue>,
    blacklist_v4: HashMap<MapData, SourceKeyV4, BlacklistEntry>,
    blacklist_v6: HashMap<MapData, SourceKey, BlacklistEntry>,
    history: HashMap<MapData, HistoryKey, ShortHistory>,
    history_long: HashMap<MapData, HistoryKey, History>,
    counters: PerCpuArray<MapData, Counter>,
    rule_stats: PerCpuArray<MapData, RuleStats>,
    reject_tokens: PerCpuArray<MapData, [u64; 2]>,
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("opening map {name}"))
}

fn v4_bytes(addr: [u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

impl Kernel {
    pub fn load() -> Result<Self> {
        Self::load_sampling(true)
    }

    /// Loads the program with the sample of blocked packets on or off (the sampling-cost
    /// bench measures both).
    pub fn load_sampling(sample_drops: bool) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global(SAMPLE_DROPS, &u8::from(sample_drops), true)
            .map_max_entries(MAP_BLACKLIST_V4, LRU_CAPACITY)
            .map_max_entries(MAP_BLACKLIST_V6, LRU_CAPACITY)
            .map_max_entries(MAP_HISTORY, LRU_CAPACITY)
            .map_max_entries(MAP_HISTORY_LONG, LRU_CAPACITY)
            .load(blocker::EBPF_OBJECT)
            .context("loading the XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the object has no program {PROGRAM_NAME}"))?
            .try_into()?;
        program.load().context("verifying the XDP program")?;
        let program = program.fd()?.as_fd().try_clone_to_owned()?;
        Ok(Self {
            program,
            settings: take(&mut ebpf, MAP_SETTINGS)?,
            rules: take(&mut ebpf, MAP_RULES)?,
            allow_v4: take(&mut ebpf, MAP_ALLOW_V4)?,
            allow_v6: take(&mut ebpf, MAP_ALLOW_V6)?,
            ban_v4: take(&mut ebpf, MAP_BAN_V4)?,
            ban_v6: take(&mut ebpf, MAP_BAN_V6)?,
            blacklist_v4: take(&mut ebpf, MAP_BLACKLIST_V4)?,
            blacklist_v6: take(&mut ebpf, MAP_BLACKLIST_V6)?,
            history: take(&mut ebpf, MAP_HISTORY)?,
            history_long: take(&mut ebpf, MAP_HISTORY_LONG)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            rule_stats: take(&mut ebpf, MAP_RULE_STATS)?,
            reject_tokens: take(&mut ebpf, MAP_REJECT_TOKENS)?,
            _ebpf: ebpf,
        })
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &OwnedFd {
        &self.program
    }

    /// Runs one frame; returns the XDP action and the frame as the program left it.
    pub fn run<'a>(&self, frame: &[u8], out: &'a mut [u8]) -> Result<(u32, &'a [u8])> {
        let (action, len) = bpf::run_once(&self.program, frame, out)?;
        Ok((action, &out[..len]))
    }

    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        Ok(self.settings.set(0, settings, 0)?)
    }

    pub fn set_rule(&mut self, slot: usize, rule: &Rule) -> Result<()> {
        Ok(self.rules.set(slot as u32, rule, 0)?)
    }

    pub fn set_allow(&mut self, prefix: &Prefix, present: bool) -> Result<()> {
        let len = u32::from(prefix.len);
        match (prefix.family == FAMILY_V4, present) {
            (true, true) => self
                .allow_v4
                .insert(&Key::new(len, v4_bytes(prefix.addr)), 1, 0)?,
            (true, false) => self
                .allow_v4
                .remove(&Key::new(len, v4_bytes(prefix.addr)))?,
            (false, true) => self.allow_v6.insert(&Key::new(len, prefix.addr), 1, 0)?,
            (false, false) => self.allow_v6.remove(&Key::new(len, prefix.addr))?,
        }
        Ok(())
    }

    pub fn set_ban(&mut self, prefix: &Prefix, ban: Option<&BanValue>) -> Result<()> {
        let len = u32::from(prefix.len);
        match (prefix.family == FAMILY_V4, ban) {
            (true, Some(ban)) => {
                self.ban_v4
                    .insert(&Key::new(len, v4_bytes(prefix.addr)), ban, 0)?
            }
            (true, None) => self.ban_v4.remove(&Key::new(len, v4_bytes(prefix.addr)))?,
            (false, Some(ban)) => self.ban_v6.insert(&Key::new(len, prefix.addr), ban, 0)?,
            (false, None) => self.ban_v6.remove(&Key::new(len, prefix.addr))?,
        }
        Ok(())
    }

    /// Empties the dynamic blacklist and the histories.
    pub fn clear_dynamic(&mut self) -> Result<()> {
        let keys: Vec<SourceKeyV4> = self.blacklist_v4.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.blacklist_v4.remove(&key)?;
        }
        let keys: Vec<SourceKey> = self.blacklist_v6.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.blacklist_v6.remove(&key)?;
        }
        let keys: Vec<HistoryKey> = self.history.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.history.remove(&key)?;
        }
        let keys: Vec<HistoryKey> = self.history_long.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.history_long.remove(&key)?;
        }
        Ok(())
    }

    /// Packets counted under `reason`, summed over CPUs.
    pub fn packets(&self, reason: Reason) -> Result<u64> {
        let per_cpu = self.counters.get(&(reason as u32), 0)?;
        Ok(per_cpu.iter().map(|c| c.packets).sum())
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<Counter>> {
        (0..Reason::COUNT)
            .map(|index| {
                let per_cpu = self.counters.get(&index, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
                    packets: sum.packets + c.packets,
                    bytes: sum.bytes + c.bytes,
                }))
            })
            .collect()
    }

    /// Every rule's stats, summed over CPUs.
    pub fn rule_stats(&self) -> Result<Vec<RuleStats>> {
        (0..MAX_RULES as u32)
            .map(|slot| {
                let per_cpu = self.rule_stats.get(&slot, 0)?;
                Ok(per_cpu.iter().fold(RuleStats::default(), |sum, s| sum + *s))
            })
            .collect()
    }

    /// The reject token bucket of `cpu`.
    pub fn reject_tokens(&self, cpu: usize) -> Result<TokenBucket> {
        let per_cpu = self.reject_tokens.get(&0, 0)?;
        let [millitokens, last_ms] = per_cpu
            .get(cpu)
            .copied()
            .ok_or_else(|| anyhow!("no CPU {cpu}"))?;
        Ok(TokenBucket {
            millitokens,
            last_ms,
        })
    }

    pub fn histories(&self) -> Result<Histories> {
        Ok(Histories {
            short: self.history.iter().collect::<Result<_, _>>()?,
            long: self.history_long.iter().collect::<Result<_, _>>()?,
        })
    }

    /// Both families' blacklist entries, under the general key.
    pub fn blacklist_entries(&self) -> Result<Vec<(SourceKey, BlacklistEntry)>> {
        let mut entries: Vec<(SourceKey, BlacklistEntry)> = self
            .blacklist_v4
            .iter()
            .map(|entry| entry.map(|(key, value)| (SourceKey::from(key), value)))
            .collect::<Result<_, _>>()?;
        for entry in self.blacklist_v6.iter() {
            entries.push(entry?);
        }
        Ok(entries)
    }
}

//! Rollback state in proxy-wasm shared data: the whole binary format and the
//! sync protocol (merge → evaluate → write back, adopt, hand over) and each
//! worker's side of it ([`Pool`]: pending outcomes, sync period) in one place.
//!
//! One value per rollout, under `augur.rollback.<name>.<salt>.<epoch>`: every
//! worker and every configuration of that rollout reads and writes the same
//! state, so a pushed configuration starts with the blocks already in force
//! (it [`adopts`](Sync::adopt) them before it serves) and a replaced one hands
//! its last counts over ([`Sync::hand_over`]). A new `rollback.epoch` or
//! `rollout.salt` is a new key: that rollout's rollback starts clean.
//!
//! Features are stored by name, so a push that adds, removes or reorders
//! features keeps the state of the features it keeps; new features start clean.
//!
//! Value layout (little-endian): `"AUGR"`, format version (u8), feature count
//! (u16), per feature its name (u8 length + bytes), blocks length (u32), the
//! blocks ([`Blocks::encode`]), the counts ([`Counts::encode`]).

use super::cells::MASK_WORDS;
use super::{evaluate, Arms, Blocks, Counts, Event, Exposure, Outcome, Policy, Tally, KPIS};

/// Proxy-wide shared memory (proxy-wasm shared data): how workers pool outcomes.
pub trait SharedStore {
    /// The value and its compare-and-swap token.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if the token still matches; false on a CAS mismatch.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

const MAGIC: &[u8; 4] = b"AUGR";
const FORMAT: u8 = 6;
/// The oldest format whose blocks read as today's: a value written by an
/// older module keeps its blocks in force (its counts start over).
const BLOCKS_SINCE: u8 = 4;
/// Compare-and-swap attempts per sync before giving up until the next tick.
const ATTEMPTS: usize = 8;

/// One configuration's view of its rollout's shared rollback state.
pub struct Sync {
    key: String,
    names: Vec<String>,
    buf: Vec<u8>,
}

/// The shared value stayed contended for every attempt of one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contended;

impl Sync {
    pub fn new(
        name: &str,
        salt: &str,
        epoch: u64,
        features: impl Iterator<Item = impl Into<String>>,
    ) -> Sync {
        Sync {
            key: format!("augur.rollback.{name}.{salt}.{epoch}"),
            names: features.map(Into::into).collect(),
            buf: Vec::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn fresh(&self) -> (Blocks, Counts) {
        (Blocks::new(self.names.len()), Counts::new(self.names.len()))
    }

    /// The shared state mapped onto this configuration's features (`None`
    /// when there is none yet or it cannot be read).
    pub fn read(&self, store: &impl SharedStore) -> Option<(Blocks, Counts)> {
        store.get(&self.key).0.and_then(|bytes| decode(&bytes, &self.names))
    }

    /// The blocks in force for this rollout, for a configuration about to serve.
    pub fn adopt(&self, store: &impl SharedStore) -> Option<Blocks> {
        self.read(store).map(|(blocks, _)| blocks)
    }

    /// Merges `pending` into the shared counts, runs the rollback tests on the
    /// pooled counts and writes the result back. Returns the blocks every
    /// worker must now apply and what changed.
    pub fn sync(
        &mut self,
        store: &mut impl SharedStore,
        pending: &Counts,
        policy: &Policy,
        now_s: u64,
    ) -> Result<(Blocks, Vec<Event>), Contended> {
        self.update(store, |blocks, counts| {
            counts.merge(pending);
            evaluate(policy, counts, blocks, now_s)
        })
    }

    /// Merges `pending` without testing: a configuration that goes away hands
    /// over what it counted since its last sync. False when contended.
    pub fn hand_over(&mut self, store: &mut impl SharedStore, pending: &Counts) -> bool {
        pending.is_empty() || self.update(store, |_, counts| counts.merge(pending)).is_ok()
    }

    fn update<T>(
        &mut self,
        store: &mut impl SharedStore,
        mut change: impl FnMut(&mut Blocks, &mut Counts) -> T,
    ) -> Result<(Blocks, T), Contended> {
        for _ in 0..ATTEMPTS {
            let (bytes, cas) = store.get(&self.key);
            let (mut blocks, mut counts) =
                bytes.as_deref().and_then(|b| decode(b, &self.names)).unwrap_or_else(|| self.fresh());
            let out = change(&mut blocks, &mut counts);
            encode(&self.names, &blocks, &counts, &mut self.buf);
            if store.set(&self.key, &self.buf, cas) {
                return Ok((blocks, out));
            }
        }
        Err(Contended)
    }
}

/// One configuration's worker-side rollback sync: the outcomes this worker
/// counted since its last merge, and when it last synced. The stream runtime
/// records into it and ticks it; everything about shared data stays here.
pub struct Pool {
    features: usize,
    /// Outcomes seen by this worker since its last merge into shared data.
    pending: Counts,
    /// The rollout's rollback state in shared data.
    shared: Sync,
    /// When this worker last synced (ms since the epoch).
    synced_ms: Option<u64>,
}

impl Pool {
    pub fn new(name: &str, salt: &str, epoch: u64, features: &[impl AsRef<str>]) -> Pool {
        Pool {
            features: features.len(),
            pending: Counts::new(features.len()),
            shared: Sync::new(name, salt, epoch, features.iter().map(|f| f.as_ref().to_string())),
            synced_ms: None,
        }
    }

    /// The shared-data key of the rollout's state.
    pub fn key(&self) -> &str {
        self.shared.key()
    }

    /// Counts a request's exploration and probe draws when it is decided
    /// (the sample-ratio checks count draws, not responses).
    pub fn record_draws(&mut self, explored: u64, probed: u64, drawn_off: u64) {
        if explored | probed != 0 {
            self.pending.record_draws(explored, drawn_off & explored, probed, drawn_off & probed);
        }
    }

    /// Counts a response under the blocks in force now.
    pub fn record(&mut self, exposure: &Exposure, blocks: &Blocks, outcome: Outcome, policy: &Policy) {
        // A block set while this request was in flight makes its comparison
        // stale: it no longer belongs to the feature's fresh on/off tallies,
        // nor (had it the feature on) to the screen of the traffic as it is
        // now served — else the in-flight tail of a harm flags its cell again.
        let mut exposure = *exposure;
        let mut screened = true;
        for f in 0..self.features.min(64) {
            let bit = 1 << f;
            if exposure.probed & bit != 0 && !blocks.probes_cell_block(f, &exposure.cells) {
                exposure.probed &= !bit; // its block was lifted (or killed) in flight
            }
            if (exposure.enabled | exposure.randomised) & bit != 0 && blocks.blocks(f, &exposure.cells) {
                screened &= exposure.enabled & bit == 0;
                exposure.randomised &= !bit;
                exposure.explored &= !bit;
            }
        }
        self.pending.record_as(&exposure, outcome, blocks.slow_ms(policy), screened);
    }

    /// Once per `sync_ms` (ticks may come faster; `slack_ms` keeps a sync from
    /// slipping a tick late): merges the pending outcomes into shared data,
    /// runs the rollback tests on the pooled counts and returns the blocks to
    /// apply and what changed. `None` when no sync was due.
    pub fn tick(
        &mut self,
        store: &mut impl SharedStore,
        now_ms: u64,
        sync_ms: u64,
        slack_ms: u64,
        policy: &Policy,
    ) -> Option<Result<(Blocks, Vec<Event>), Contended>> {
        if self.synced_ms.is_some_and(|at| now_ms.saturating_sub(at) + slack_ms < sync_ms) {
            return None;
        }
        self.synced_ms = Some(now_ms);
        let result = self.shared.sync(store, &self.pending, policy, now_ms / 1000);
        if result.is_ok() {
            self.pending = Counts::new(self.features);
        }
        Some(result)
    }

    /// The blocks in force for this rollout, for a configuration about to serve.
    pub fn adopt(&self, store: &impl SharedStore) -> Option<Blocks> {
        self.shared.adopt(store)
    }

    /// When the configuration goes away: hands what it counted since its last
    /// sync over to the shared state.
    pub fn hand_over(&mut self, store: &mut impl SharedStore) {
        if self.shared.hand_over(store, &self.pending) {
            self.pending = Counts::new(self.features);
        }
    }
}

/// Writes the shared value for features `names`.
pub fn encode(names: &[String], blocks: &Blocks, counts: &Counts, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for n in names {
        let n = &n.as_bytes()[..n.len().min(255)];
        out.push(n.len() as u8);
        out.extend_from_slice(n);
    }
    let mut b = Vec::new();
    blocks.encode(&mut b);
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(&b);
    let mut c = Vec::new();
    counts.encode(&mut c);
    out.extend_from_slice(&c);
}

/// Reads a shared value and maps it onto the features `names` (by name);
/// `None` when the bytes are not a value of this format.
pub fn decode(bytes: &[u8], names: &[String]) -> Option<(Blocks, Counts)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (&format, rest) = rest.split_first()?;
    if !(BLOCKS_SINCE..=FORMAT).contains(&format) {
        return None;
    }
    let stored_n = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
    let mut rest = &rest[2..];
    let mut stored = Vec::with_capacity(stored_n);
    for _ in 0..stored_n {
        let (&len, r) = rest.split_first()?;
        let name = r.get(..usize::from(len))?;
        stored.push(name);
        rest = &r[usize::from(len)..];
    }
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let blocks = Blocks::decode_as(rest.get(4..4 + len)?, stored_n, format)?;
    let counts = match format {
        FORMAT => Counts::decode(rest.get(4 + len..)?, stored_n)?,
        _ => Counts::new(stored_n),
    };
    let map: Vec<Option<usize>> =
        names.iter().map(|n| stored.iter().position(|s| *s == &n.as_bytes()[..n.len().min(255)])).collect();
    Some((blocks.remap(&map), counts.remap(&map)))
}

/// Little-endian words in order; the reader returns `None` past the end.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn tally(&mut self, t: &Tally) {
        self.u32(t.n);
        for b in t.bad {
            self.u32(b);
        }
    }
}

fn write_arms(w: &mut Writer<'_>, arms: &Arms) {
    for t in arms.cells.iter().flatten() {
        w.tally(t);
    }
    w.u32(arms.drawn[0]);
    w.u32(arms.drawn[1]);
}

fn read_arms(r: &mut Reader<'_>, arms: &mut Arms) -> Option<()> {
    for t in arms.cells.iter_mut().flatten() {
        *t = r.tally()?;
    }
    arms.drawn = [r.u32()?, r.u32()?];
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn tally(&mut self) -> Option<Tally> {
        let n = self.u32()?;
        let mut bad = [0; KPIS];
        for b in bad.iter_mut() {
            *b = self.u32()?;
        }
        Some(Tally { n, bad })
    }
}

impl Blocks {
    /// The state of stored feature `map[i]` as feature `i` (fresh where `None`).
    pub fn remap(&self, map: &[Option<usize>]) -> Blocks {
        let mut out = Blocks::new(map.len());
        out.suspect = self.suspect;
        out.reverted = self.reverted;
        out.slow_ms = self.slow_ms;
        out.window_s = self.window_s;
        out.probe_ppm = self.probe_ppm;
        out.quiet_until.clone_from(&self.quiet_until);
        for (f, from) in map.iter().enumerate() {
            let Some(s) = *from else { continue };
            out.cells[f] = self.cells.get(s).copied().unwrap_or([0; MASK_WORDS]);
            out.since[f] = self.since.get(s).copied().unwrap_or(0);
            out.blocked_at[f] = self.blocked_at.get(s).copied().unwrap_or(0);
            out.kpis[f] = self.kpis.get(s).copied().unwrap_or(0);
            if s < 64 && f < 64 {
                for (to, from) in [
                    (&mut out.killed, self.killed),
                    (&mut out.srm, self.srm),
                    (&mut out.probing, self.probing),
                    (&mut out.lifted, self.lifted),
                    (&mut out.relapsed, self.relapsed),
                ] {
                    *to |= ((from >> s) & 1) << f;
                }
            }
        }
        out
    }

    /// Little-endian fields, for [`encode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut w = Writer(out);
        w.u64(self.killed);
        w.u32(self.suspect);
        w.u32(u32::from(self.reverted));
        w.u64(self.srm);
        w.u32(self.slow_ms);
        w.u64(self.window_s);
        w.u64(self.probing);
        w.u64(self.lifted);
        w.u64(self.relapsed);
        w.u32(self.probe_ppm);
        for q in &self.quiet_until {
            w.u64(*q);
        }
        for (f, mask) in self.cells.iter().enumerate() {
            for word in mask {
                w.u64(*word);
            }
            w.u64(self.since.get(f).copied().unwrap_or(0));
            w.u64(self.blocked_at.get(f).copied().unwrap_or(0));
            w.u32(u32::from(self.kpis.get(f).copied().unwrap_or(0)));
        }
    }

    /// Inverse of [`Blocks::encode`]; `None` when the bytes do not fit `features`.
    pub fn decode(bytes: &[u8], features: usize) -> Option<Blocks> {
        Blocks::decode_as(bytes, features, FORMAT)
    }

    /// [`Blocks::decode`] of a value of shared-data `format` (one before 6 has
    /// no probe fields: a block's probe waits from its first block).
    fn decode_as(bytes: &[u8], features: usize, format: u8) -> Option<Blocks> {
        let probed = format >= 6;
        let mut r = Reader(bytes);
        let mut b = Blocks::new(features);
        b.killed = r.u64()?;
        b.suspect = r.u32()?;
        b.reverted = r.u32()? != 0;
        b.srm = r.u64()?;
        b.slow_ms = r.u32()?;
        b.window_s = r.u64()?;
        if probed {
            b.probing = r.u64()?;
            b.lifted = r.u64()?;
            b.relapsed = r.u64()?;
            b.probe_ppm = r.u32()?;
        }
        for q in b.quiet_until.iter_mut() {
            *q = r.u64()?;
        }
        for f in 0..features {
            for word in b.cells[f].iter_mut() {
                *word = r.u64()?;
            }
            b.since[f] = r.u64()?;
            b.blocked_at[f] = if probed { r.u64()? } else { b.since[f] };
            // Before format 6 the block's KPI was not kept: a lift then has to
            // show every KPI that has events clean.
            b.kpis[f] = if probed { u8::try_from(r.u32()?).ok()? } else { 0 };
        }
        r.0.is_empty().then_some(b)
    }
}

impl Counts {
    /// The tallies of stored feature `map[i]` as feature `i` (empty where `None`).
    pub fn remap(&self, map: &[Option<usize>]) -> Counts {
        let pick = |all: &[Arms]| -> Vec<Arms> {
            map.iter().map(|from| from.and_then(|s| all.get(s)).cloned().unwrap_or_default()).collect()
        };
        Counts { arms: pick(&self.arms), probes: pick(&self.probes), ..self.clone() }
    }

    /// Little-endian words, for [`encode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let mut w = Writer(out);
        for t in self.stack.iter().flatten().flatten().chain(&self.baseline) {
            w.tally(t);
        }
        for n in self.latency.iter().flatten().chain(&self.explored).chain(&self.traffic) {
            w.u32(*n);
        }
        for arms in &self.arms {
            write_arms(&mut w, arms);
        }
        // Probes only where a feature has one (most have none): a presence word each.
        for probe in &self.probes {
            let present = probe.drawn != [0, 0] || probe.cells.iter().flatten().any(|t| t.n != 0);
            w.u32(u32::from(present));
            if present {
                write_arms(&mut w, probe);
            }
        }
    }

    /// Inverse of [`Counts::encode`]; `None` when the bytes do not fit `features`.
    pub fn decode(bytes: &[u8], features: usize) -> Option<Counts> {
        let mut c = Counts::new(features);
        let mut r = Reader(bytes);
        for t in c.stack.iter_mut().flatten().flatten().chain(c.baseline.iter_mut()) {
            *t = r.tally()?;
        }
        for n in c.latency.iter_mut().flatten().chain(c.explored.iter_mut()).chain(c.traffic.iter_mut()) {
            *n = r.u32()?;
        }
        for arms in c.arms.iter_mut() {
            read_arms(&mut r, arms)?;
        }
        for probe in c.probes.iter_mut() {
            match r.u32()? {
                0 => {}
                1 => read_arms(&mut r, probe)?,
                _ => return None,
            }
        }
        r.0.is_empty().then_some(c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rollback::{cells, Arms, Exposure, Outcome, GROUPS};
    use crate::routing::Stack;

    pub use crate::offline::MemoryStore as FakeStore;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn some_cells() -> [u8; GROUPS] {
        cells(&crate::profile::Profile::default())
    }

    fn exposure(enabled: u64, randomised: u64) -> Exposure {
        Exposure {
            stack: Some(Stack::New),
            cells: some_cells(),
            enabled,
            randomised,
            explored: randomised,
            drawn_off: randomised & !enabled,
            probed: 0,
        }
    }

    fn bad(error: bool) -> Outcome {
        Outcome { error, ..Outcome::default() }
    }

    #[test]
    fn state_round_trips_and_follows_features_by_name() {
        let mut blocks = Blocks::new(3);
        blocks.cells[0][0] = 0b1;
        blocks.cells[1][0] = 0b10;
        blocks.cells[2][4] = 0b100;
        blocks.since = vec![5, 6, 7];
        blocks.killed = 0b100;
        blocks.srm = 0b001;
        blocks.suspect = 1 << 9;
        blocks.slow_ms = 42;
        blocks.quiet_until[3] = 99;
        blocks.blocked_at = vec![8, 9, 10];
        blocks.probing = 0b010;
        blocks.kpis = vec![0b001, 0b100, 0b011];
        (blocks.lifted, blocks.relapsed, blocks.probe_ppm) = (0b011, 0b001, 50_000);
        let mut counts = Counts::new(3);
        counts.record(&exposure(0b111, 0b111), bad(true), 1000);
        counts.record(&Exposure { probed: 0b010, ..exposure(0b010, 0) }, bad(true), 1000);
        counts.record_draws(0, 0, 0b010, 0);
        let probe_on = counts.probes[1].cells[crate::rollback::OVERALL][0];
        let arm_on = counts.arms[1].cells[crate::rollback::OVERALL][0];
        assert_eq!(
            (probe_on.n, counts.probes[1].drawn, arm_on.n),
            (1, [1, 0], 1),
            "a probe stays out of the arms"
        );
        counts.record(&Exposure { stack: Some(Stack::Old), ..exposure(0, 0) }, bad(false), 1000);
        let from = names(&["a", "b", "c"]);
        let mut bytes = Vec::new();
        encode(&from, &blocks, &counts, &mut bytes);
        assert_eq!(decode(&bytes, &from), Some((blocks.clone(), counts.clone())));

        // Reordered, one dropped, one new: kept by name, the new one fresh.
        let (b, c) = decode(&bytes, &names(&["new", "c", "a"])).unwrap();
        assert_eq!(b.cells, vec![[0; MASK_WORDS], blocks.cells[2], blocks.cells[0]]);
        assert_eq!(b.since, vec![0, 7, 5]);
        assert_eq!((b.blocked_at, b.probing), (vec![0, 10, 8], 0), "b's probe went with b");
        assert_eq!(
            (b.kpis, b.lifted, b.relapsed, b.probe_ppm),
            (vec![0, 0b011, 0b001], 0b100, 0b100, 50_000)
        );
        assert_eq!(b.killed, 0b010, "c's kill follows c");
        assert_eq!(b.srm, 0b100, "a's sample-ratio flag follows a");
        assert_eq!((b.suspect, b.slow_ms, b.quiet_until[3]), (blocks.suspect, 42, 99));
        assert_eq!(c.arms[0], Arms::new());
        assert_eq!(c.arms[2], counts.arms[0]);
        assert_eq!((c.probes[1].clone(), c.probes[2].clone()), (Arms::new(), counts.probes[0].clone()));
        assert_eq!(c.stack, counts.stack);
        assert_eq!(c.latency, counts.latency);

        assert_eq!(decode(&bytes[..bytes.len() - 1], &from), None);
        assert_eq!(decode(b"junk", &from), None);
        let mut wrong = bytes.clone();
        wrong[4] = BLOCKS_SINCE - 1;
        assert_eq!(decode(&wrong, &from), None, "an older format is not misread");
        // Written by the previous module (format 5: no probe fields, other
        // counts): its blocks stay in force, each probe waiting from its first block.
        let mut previous = bytes[..4].to_vec();
        previous.push(5);
        let blocks_at = 4 + 1 + 2 + from.iter().map(|n| 1 + n.len()).sum::<usize>();
        previous.extend_from_slice(&bytes[5..blocks_at]);
        // The format-5 blocks layout, written out here on purpose: a frozen
        // copy, not the encoder (which moves on with the format).
        let mut old = Vec::new();
        let mut w = Writer(&mut old);
        w.u64(blocks.killed);
        w.u32(blocks.suspect);
        w.u32(u32::from(blocks.reverted));
        w.u64(blocks.srm);
        w.u32(blocks.slow_ms);
        w.u64(blocks.window_s);
        blocks.quiet_until.iter().for_each(|q| w.u64(*q));
        for (mask, since) in blocks.cells.iter().zip(&blocks.since) {
            mask.iter().for_each(|m| w.u64(*m));
            w.u64(*since);
        }
        previous.extend_from_slice(&(old.len() as u32).to_le_bytes());
        previous.extend_from_slice(&old);
        previous.extend_from_slice(b"older counts");
        let want = Blocks {
            blocked_at: blocks.since.clone(),
            probing: 0,
            kpis: vec![0; 3],
            lifted: 0,
            relapsed: 0,
            probe_ppm: 0,
            ..blocks.clone()
        };
        assert_eq!(decode(&previous, &from), Some((want, Counts::new(3))));
    }

    #[test]
    fn epoch_and_salt_are_part_of_the_key() {
        let key = |salt, epoch| Sync::new("r", salt, epoch, ["a"].into_iter()).key().to_string();
        assert_ne!(key("s", 0), key("s", 1));
        assert_ne!(key("s", 0), key("t", 0));
    }

    #[test]
    fn a_new_configuration_adopts_and_a_replaced_one_hands_over() {
        let mut store = FakeStore::default();
        let policy = Policy::default();
        let mut first = Sync::new("r", "s", 0, ["a", "b"].into_iter());
        let mut pending = Counts::new(2);
        for i in 0..200 {
            pending.record(&exposure(0b01, 0b01), bad(i % 2 == 0), 1000);
            pending.record(&exposure(0b00, 0b01), bad(false), 1000);
        }
        let (blocks, events) = first.sync(&mut store, &pending, &policy, 10).unwrap();
        assert!(blocks.any_block(0) || blocks.killed & 1 != 0, "{events:?}");

        // A pushed configuration with one more feature, before serving.
        let second = Sync::new("r", "s", 0, ["z", "a", "b"].into_iter());
        let adopted = second.adopt(&store).unwrap();
        assert_eq!(adopted.cells[1], blocks.cells[0]);
        assert_eq!(adopted.killed & 0b010 != 0, blocks.killed & 1 != 0);

        // The replaced one hands over its last counts without testing them.
        let mut last = Counts::new(2);
        last.record(&Exposure { stack: Some(Stack::Old), ..exposure(0, 0) }, bad(false), 1000);
        let cell = usize::from(some_cells()[0]);
        let before = second.read(&store).unwrap().1.stack[0][0][cell].n;
        assert!(first.hand_over(&mut store, &last));
        assert_eq!(second.read(&store).unwrap().1.stack[0][0][cell].n, before + 1);
        assert!(
            Sync::new("r", "s", 1, ["a"].into_iter()).adopt(&store).is_none(),
            "a new epoch starts clean"
        );
    }

    #[test]
    fn a_response_under_a_new_block_leaves_the_tallies_it_no_longer_belongs_to() {
        // Feature a was blocked in the request's device cell while it was in flight.
        let policy = Policy::default();
        let mut pool = Pool::new("r", "s", 0, &["a", "b"]);
        let mut blocks = Blocks::new(2);
        let device = usize::from(some_cells()[0]);
        blocks.cells[0][0] = 1 << device;
        pool.record(&exposure(0b11, 0b11), &blocks, bad(true), &policy);
        let p = &pool.pending;
        assert_eq!(p.stack[0][1][device].n, 0, "a blocked harm's in-flight tail does not re-flag its cell");
        assert_eq!(p.arms[0].cells[device], [Tally::default(); 2], "a's arms: no longer randomised");
        assert_eq!(p.arms[1].cells[device][0].n, 1, "b's comparison is untouched");
        // With a off (as the block now serves it), the screen counts it.
        pool.record(&exposure(0b10, 0b11), &blocks, bad(false), &policy);
        assert_eq!(pool.pending.stack[0][1][device].n, 1);
    }
}

//! Rollback: live refinement and automated rollback from observed outcomes.
//!
//! Every response is scored on three KPIs — an **error** (5xx or no status), an
//! app-reported **security** event, a **slow** response (latency above the
//! control requests' own p90, learned online, but at least `slow_floor_ms`
//! and at most `slow_ms`) — and
//! tallied per cell (see [`cells`]: single attributes and pairs of them):
//!
//! - per stack and cell, over a sliding window: a single cell whose new stack
//!   is worse than the old stack in the same cell (or than the rest of its
//!   group, which also works at 100%) becomes **suspect** — a screening step
//!   that only starts exploration; a block takes its requests out of the
//!   window, which ends the exploration it explains;
//! - per feature, cell and arm (on / off), counting only requests whose state
//!   was their own random draw (exploration), so on and off are comparable
//!   groups of independent requests. An A/B holdout is drawn per user: its
//!   requests are not counted here (one user's requests share one arm, so a
//!   few users who fail on their own would pass for a harm); the A/B report
//!   judges holdouts from the records.
//!
//! In a suspect cell augur **explores**: each `auto` feature that would be on is
//! turned off for `explore_share` of the requests (reason `exploring`). The
//! cell is cleared once it has seen enough explored requests with no culprit,
//! and stays quiet for a while. A feature whose on arm is worse than its off
//! arm in a cell is **blocked** there (reason `rolled_back`); the most specific
//! cell that explains the harm is chosen (a pair when the harm lives where two
//! attributes meet). Blocked in `kill_after_cells` single cells, or worse
//! overall, it is **killed**; new-stack requests with no feature on that are
//! worse than the old stack **revert** the rollout.
//!
//! Every action test is an always-valid sequential test ([`stats`]): the false
//! alarm budget `alpha` holds however often the tests are looked at. It is
//! split in four equal parts — single-cell blocks, pair-cell blocks, kills,
//! reverts — each shared evenly (Bonferroni) over its features × cells × KPIs.
//! A feature whose exploration split does not match `explore_share` (a sample
//! ratio mismatch) gets no automated decision until the next epoch.
//!
//! This module is pure: the filter keeps per-worker deltas, merges them into
//! proxy-wasm shared data ([`shared`]) on a timer, and runs [`evaluate`] on the
//! merged state, which all workers then apply.

pub mod cells;
pub mod config;
mod log;
pub mod shared;
pub mod stats;

pub use cells::{cell_name, cells, ALL_CELLS, CELLS, GROUPS};
pub use shared::{Pool, SharedStore, Sync};

use crate::routing::Stack;
use cells::{expand, parents, siblings, Overlap, MASK_WORDS};
use stats::{ln_harm, ln_no_harm, ln_ratio, threshold};

/// KPIs judged per response.
pub const KPIS: usize = 3;
pub const KPI_NAMES: [&str; KPIS] = ["errors", "security", "latency"];

/// Upper bounds (ms) of the control-latency histogram the slow cut is learned from.
pub const LATENCY_BOUNDS: [u32; 22] =
    [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS.len() + 1;
/// Control responses needed before the slow cut is learned (until then: `slow_ms`).
const LATENCY_MIN: u32 = 200;
/// Quantile of the control latency above which a response counts as slow.
const SLOW_QUANTILE: f64 = 0.9;
/// Screening window: suspect tests see the last one to two windows.
const WINDOW_S: u64 = 30;
/// False-alarm level of the screening (starts exploration only), over cells × KPIs.
const SCREEN_ALPHA: f64 = 0.05;
/// False-alarm level of the sample-ratio check, over features.
const SRM_ALPHA: f64 = 0.001;
/// Explored requests after which a suspect cell with no culprit is cleared…
const EXPLORE_CLEAR: u32 = 300;
/// …unless some feature is gathering evidence there, up to this many.
const EXPLORE_MAX: u32 = 3000;
/// A cleared cell is not suspected again for this long.
const QUIET_S: u64 = 120;
/// The harm a block's lift rules out: the probed arm's bad rate twice the
/// blocked arm's, on every KPI that has events.
pub const PROBE_RHO: f64 = 2.0;

/// One response's KPIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub error: bool,
    pub security: bool,
    pub latency_ms: u64,
}

impl Outcome {
    fn bad(&self, slow_ms: u64) -> [bool; KPIS] {
        [self.error, self.security, self.latency_ms > slow_ms]
    }
}

/// Requests and bad events per KPI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub n: u32,
    pub bad: [u32; KPIS],
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.n = self.n.saturating_add(other.n);
        for (a, b) in self.bad.iter_mut().zip(other.bad) {
            *a = a.saturating_add(b);
        }
    }
    fn record(&mut self, bad: [bool; KPIS]) {
        self.n = self.n.saturating_add(1);
        if bad == [false; KPIS] {
            return; // most responses: ~100 tallies each, per response
        }
        for (a, b) in self.bad.iter_mut().zip(bad) {
            *a = a.saturating_add(u32::from(b));
        }
    }
    fn minus(self, other: Tally) -> Tally {
        let mut out = Tally { n: self.n.saturating_sub(other.n), ..Tally::default() };
        for k in 0..KPIS {
            out.bad[k] = self.bad[k].saturating_sub(other.bad[k]);
        }
        out
    }
    fn rate(&self, k: usize) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            f64::from(self.bad[k]) / f64::from(self.n)
        }
    }
}

/// Evidence that `a` is worse than `b` on KPI `k` (ln of the mixture ratio),
/// `a` and `b` being two randomised arms of one split.
///
/// Below [`EXACT_FROM`] it returns a cheap upper bound instead (the maximum
/// likelihood ratio, which no mixture exceeds): every level the tests compare
/// against is higher, so decisions are the same, and a sync does not compute
/// thousands of incomplete beta functions for cells with nothing going on.
pub fn evidence(a: Tally, b: Tally, k: usize) -> f64 {
    let n = u64::from(a.n) + u64::from(b.n);
    if a.n == 0 || b.n == 0 {
        return 0.0;
    }
    let pi = f64::from(a.n) / n as f64;
    let (x, total) = (f64::from(a.bad[k]), f64::from(a.bad[k]) + f64::from(b.bad[k]));
    if total == 0.0 || x <= pi * total {
        return 0.0; // no excess on the tested arm: M ≤ 1
    }
    let q = x / total;
    let mut bound = x * (q / pi).ln();
    if total > x {
        bound += (total - x) * ((1.0 - q) / (1.0 - pi)).ln();
    }
    if bound < EXACT_FROM {
        return bound;
    }
    ln_harm(u64::from(a.bad[k]), u64::from(a.bad[k]) + u64::from(b.bad[k]), pi)
}

/// Evidence below this is reported as its upper bound (see [`evidence`]); every
/// level in [`Levels`] (and half of it) is above it.
const EXACT_FROM: f64 = 2.0;

/// Bad events on the tested arm `a` beyond its share of all bad events on KPI
/// `k`: the harm's size in events.
fn excess(a: Tally, b: Tally, k: usize) -> f64 {
    let pi = f64::from(a.n) / f64::from((a.n + b.n).max(1));
    f64::from(a.bad[k]) - pi * f64::from(a.bad[k] + b.bad[k])
}

/// Lower confidence bound (~2 standard errors) of `a`'s excess bad rate over `b`.
fn excess_lcb(a: Tally, b: Tally, k: usize) -> f64 {
    let (pa, pb) = (a.rate(k), b.rate(k));
    let var = pa * (1.0 - pa) / f64::from(a.n.max(1)) + pb * (1.0 - pb) / f64::from(b.n.max(1));
    pa - pb - 2.0 * var.sqrt()
}

/// What happens to rolled-back features after a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Blocks stay until a new `rollback.epoch` (or `rollout.salt`).
    Manual,
    /// Blocks are lifted after this many seconds and the feature is re-tested.
    Probation { seconds: u64 },
}

/// The compiled `rollback` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    /// A response this slow is always slow (the learned cut may be lower).
    pub slow_ms: u64,
    /// …and one this fast never is: a regression smaller than this is not one
    /// worth a rollback, however significant (sub-millisecond noise on a fast
    /// service would otherwise be).
    pub slow_floor_ms: u64,
    /// False-alarm budget of all automated actions of one rollout.
    pub alpha: f64,
    /// Minimum requests in each arm before a test (keeps the arm shares stable).
    pub min_samples: u32,
    /// Blocked in this many single cells → killed everywhere.
    pub kill_after_cells: u32,
    /// Share of would-be-on requests turned off in suspect cells.
    pub explore_share: f64,
    /// Most of the new stack's traffic that may be in exploring cells.
    pub explore_budget: f64,
    pub recovery: Recovery,
    /// Share of a blocked feature's would-be-on requests inside its cell
    /// blocks that keep it on (the *probe*, reason `probing`): the randomised
    /// holdout by which a block is lifted (its harm gone) or narrowed (the harm
    /// confined to pairs inside it). 0: blocks stay (until `epoch` or probation).
    pub probe_share: f64,
    /// A feature's blocks are probed once its last block change is this old
    /// (seconds): a harm just shown is not re-exposed at once.
    pub probe_after_s: u64,
    /// Part of the shared-state key: a new epoch starts this rollout's rollback
    /// state clean (e.g. after a retrained model absorbed the blocks).
    pub epoch: u64,
}

impl Policy {
    /// Both arms of a test have `min_samples` requests: below that, no test.
    fn enough(&self, a: Tally, b: Tally) -> bool {
        a.n >= self.min_samples && b.n >= self.min_samples
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            slow_ms: 1000,
            slow_floor_ms: 100,
            alpha: 0.01,
            min_samples: 20,
            kill_after_cells: 4,
            explore_share: 0.5,
            explore_budget: 0.3,
            recovery: Recovery::Manual,
            probe_share: 0.05,
            probe_after_s: 300,
            epoch: 0,
        }
    }
}

/// Index in [`Arms::cells`] of the feature's randomised requests since its
/// last block, whatever their cells: the kill test's exact "traffic it still
/// serves" (blocked requests are not randomised).
pub const OVERALL: usize = ALL_CELLS;

/// One feature's randomised tallies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arms {
    /// Per cell (singles, then pairs, then [`OVERALL`]) × arm (0 = on, 1 = off).
    pub cells: Vec<[Tally; 2]>,
    /// Draws at decision time: [kept on, drawn off] (the sample-ratio check).
    pub drawn: [u32; 2],
}

impl Default for Arms {
    fn default() -> Self {
        Arms::new()
    }
}

impl Arms {
    pub fn new() -> Arms {
        Arms { cells: vec![[Tally::default(); 2]; ALL_CELLS + 1], drawn: [0; 2] }
    }

    /// Removes the requests of `blocked` (now blocked, so no longer
    /// randomised) from every tally that can tell which they were
    /// ([`forget_block`]), and starts over the ones that cannot.
    fn forget(&mut self, blocked: usize) {
        if blocked >= ALL_CELLS {
            *self = Arms { drawn: self.drawn, ..Arms::new() };
            return;
        }
        let minus = |a: [Tally; 2], b: [Tally; 2]| [a[0].minus(b[0]), a[1].minus(b[1])];
        forget_block(&mut self.cells[..ALL_CELLS], blocked, Some([Tally::default(); 2]), minus);
        self.cells[OVERALL] = [Tally::default(); 2];
    }

    /// Starts over the tallies of `cell` and of the cells inside it (a single
    /// cell's pairs): a probe's test of a cell newly blocked or lifted. Every
    /// other cell keeps its tallies — a probed request stays valid evidence for
    /// the blocks that still hold it.
    fn clear_inside(&mut self, cell: usize) {
        for (c, t) in self.cells.iter_mut().enumerate().take(ALL_CELLS) {
            if c == cell || parents(c).is_some_and(|(a, b)| a == cell || b == cell) {
                *t = [Tally::default(); 2];
            }
        }
    }

    /// Halves every tally once one nears `u32::MAX` requests: a probe runs for
    /// as long as its block, and a saturated request count with bad events
    /// still counting would read as evidence.
    fn keep_in_range(&mut self) {
        if self.cells.iter().flatten().any(|t| t.n >= 1 << 31) {
            for t in self.cells.iter_mut().flatten() {
                t.n /= 2;
                t.bad.iter_mut().for_each(|b| *b /= 2);
            }
        }
    }
}

/// Takes the requests of cell `blocked` out of per-cell tallies `cells`
/// (indexed by cell): a cell disjoint from the block keeps everything, one
/// whose overlap is exactly some cell's requests loses that cell's tally
/// (itself, inside the block, loses all); one whose overlap is a triple
/// nobody counted becomes `unknown` (a fresh tally), or stays as it is when
/// `unknown` is `None`. Returns the single cells that lost exactly the block's
/// requests (bitmask).
fn forget_block<T: Copy>(
    cells: &mut [T],
    blocked: usize,
    unknown: Option<T>,
    minus: impl Fn(T, T) -> T,
) -> u32 {
    let before = cells.to_vec();
    let mut exact = 0;
    for (c, t) in cells.iter_mut().enumerate() {
        match cells::overlap(blocked, c) {
            Overlap::Disjoint => {}
            Overlap::Within(part) => {
                *t = minus(*t, before[part]);
                if c < CELLS {
                    exact |= 1 << c;
                }
            }
            Overlap::Unknown => *t = unknown.unwrap_or(*t),
        }
    }
    exact
}

/// Outcome tallies, mergeable across workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Screening: window (0 = current, 1 = previous) × stack × cell. Suspects
    /// are single cells; the pairs let a block take exactly its requests out.
    pub stack: [[[Tally; ALL_CELLS]; 2]; 2],
    /// Old-stack requests [0], and new-stack requests with no feature on [1].
    pub baseline: [Tally; 2],
    pub arms: Vec<Arms>,
    /// Per feature, the probe inside its blocks: the same layout, counting only
    /// probed requests (on = kept by the probe, off = blocked), a design of its
    /// own (`probe_share`) that never mixes with the arms'.
    pub probes: Vec<Arms>,
    /// Latency histograms of control requests (old stack, or no feature on)
    /// [0] and of every request [1] (the cut's fallback at 100% rollout).
    pub latency: [[u32; LATENCY_SLOTS]; 2],
    /// Explored requests per single cell since it became suspect.
    pub explored: [u32; CELLS],
    /// New-stack requests per cell (singles and pairs): which pairs are
    /// narrower than their parents.
    pub traffic: Vec<u32>,
}

fn stack_ix(s: Stack) -> usize {
    match s {
        Stack::Old => 0,
        Stack::New => 1,
    }
}

/// What the request side knew about one response's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exposure {
    pub stack: Option<Stack>,
    pub cells: [u8; GROUPS],
    /// Features on.
    pub enabled: u64,
    /// Features whose on/off state was this request's own random draw
    /// (exploration, not a per-user holdout): the arms' requests.
    pub randomised: u64,
    /// Of those, features drawn by exploration…
    pub explored: u64,
    /// …and of those, the ones the draw turned off.
    pub drawn_off: u64,
    /// Features blocked in the request's cells whose on/off state was the
    /// block's probe draw (on: kept by the probe); not in `randomised`.
    pub probed: u64,
}

impl Counts {
    pub fn new(features: usize) -> Counts {
        Counts {
            stack: [[[Tally::default(); ALL_CELLS]; 2]; 2],
            baseline: [Tally::default(); 2],
            arms: (0..features).map(|_| Arms::new()).collect(),
            probes: (0..features).map(|_| Arms::new()).collect(),
            latency: [[0; LATENCY_SLOTS]; 2],
            explored: [0; CELLS],
            traffic: vec![0; ALL_CELLS],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stack.iter().flatten().flatten().all(|t| t.n == 0)
            && self.baseline.iter().all(|t| t.n == 0)
            && self
                .arms
                .iter()
                .chain(&self.probes)
                .all(|a| a.cells.iter().flatten().all(|t| t.n == 0) && a.drawn == [0, 0])
    }

    /// Records one response; `slow_ms` is the slow cut in force.
    pub fn record(&mut self, x: &Exposure, outcome: Outcome, slow_ms: u64) {
        self.record_as(x, outcome, slow_ms, true);
    }

    /// [`Counts::record`]; with `screened` false the screening tallies leave
    /// it out (a response the blocks now in force would not serve as it was).
    pub fn record_as(&mut self, x: &Exposure, outcome: Outcome, slow_ms: u64, screened: bool) {
        let Some(stack) = x.stack else { return };
        let bad = outcome.bad(slow_ms);
        let all = expand(&x.cells);
        if screened {
            for &c in &all {
                if let Some(t) = self.stack[0][stack_ix(stack)].get_mut(usize::from(c)) {
                    t.record(bad);
                }
            }
        }
        let slot = LATENCY_BOUNDS.iter().position(|&b| outcome.latency_ms <= u64::from(b));
        let slot = slot.unwrap_or(LATENCY_BOUNDS.len());
        let control = stack == Stack::Old || x.enabled == 0;
        for (h, counted) in self.latency.iter_mut().zip([control, true]) {
            if counted {
                h[slot] = h[slot].saturating_add(1);
            }
        }
        if control {
            self.baseline[stack_ix(stack)].record(bad);
        }
        if stack != Stack::New {
            return;
        }
        for &c in &all {
            if let Some(t) = self.traffic.get_mut(usize::from(c)) {
                *t = t.saturating_add(1);
            }
        }
        if x.randomised | x.probed == 0 {
            return;
        }
        if x.explored != 0 {
            for &c in &x.cells {
                if let Some(e) = self.explored.get_mut(usize::from(c)) {
                    *e = e.saturating_add(1);
                }
            }
        }
        tally_arms(&mut self.arms, x.randomised, x.enabled, &all, bad);
        tally_arms(&mut self.probes, x.probed, x.enabled, &all, bad);
    }

    /// Records one request's exploration and probe draws, when it is decided:
    /// counted on the responses instead, a treatment that is slower (or never
    /// answers) would look like a skewed draw while its requests are in flight.
    pub fn record_draws(&mut self, explored: u64, drawn_off: u64, probed: u64, probe_off: u64) {
        count_draws(&mut self.arms, explored, drawn_off);
        count_draws(&mut self.probes, probed, probe_off);
    }

    /// Adds `other` (same feature count) into `self`.
    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.stack.iter_mut().flatten().flatten().zip(other.stack.iter().flatten().flatten()) {
            a.add(*b);
        }
        for (a, b) in self.baseline.iter_mut().zip(other.baseline.iter()) {
            a.add(*b);
        }
        for (a, b) in self.arms.iter_mut().zip(&other.arms).chain(self.probes.iter_mut().zip(&other.probes)) {
            for (x, y) in a.cells.iter_mut().flatten().zip(b.cells.iter().flatten()) {
                x.add(*y);
            }
            for (x, y) in a.drawn.iter_mut().zip(b.drawn) {
                *x = x.saturating_add(y);
            }
        }
        for (a, b) in self.latency.iter_mut().flatten().zip(other.latency.iter().flatten()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.explored.iter_mut().zip(other.explored) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.traffic.iter_mut().zip(&other.traffic) {
            *a = a.saturating_add(*b);
        }
    }

    /// Takes a new block's requests out of both windows' screening tallies,
    /// on both stacks alike (the comparison stays like for like); a triple
    /// overlap nobody counted stays in. Returns the single cells whose
    /// tallies lost exactly the block's requests (bitmask).
    fn forget_screened(&mut self, blocked: usize) -> u32 {
        let mut exact = 0;
        for t in self.stack.iter_mut().flatten() {
            exact |= forget_block(t, blocked, None, Tally::minus);
        }
        exact
    }

    /// The screening tallies of both windows.
    fn screened(&self, stack: usize, c: usize) -> Tally {
        let mut t = self.stack[0][stack][c];
        t.add(self.stack[1][stack][c]);
        t
    }
}

/// Tallies one response in the arms of the features in `mask` (on = `enabled`),
/// in each of the request's cells `all` and overall.
fn tally_arms(arms: &mut [Arms], mask: u64, enabled: u64, all: &[u16], bad: [bool; KPIS]) {
    if mask == 0 {
        return;
    }
    for (f, arms) in arms.iter_mut().enumerate().take(64) {
        if mask & (1 << f) == 0 {
            continue;
        }
        let arm = usize::from(enabled & (1 << f) == 0);
        for c in all.iter().map(|&c| usize::from(c)).chain([OVERALL]) {
            if let Some(cell) = arms.cells.get_mut(c) {
                cell[arm].record(bad);
            }
        }
    }
}

/// Counts the draws of the features in `mask` ([kept on, drawn off]).
fn count_draws(arms: &mut [Arms], mask: u64, off: u64) {
    if mask == 0 {
        return;
    }
    for (f, arms) in arms.iter_mut().enumerate().take(64) {
        if mask & (1 << f) != 0 {
            let drawn = usize::from(off & (1 << f) != 0);
            arms.drawn[drawn] = arms.drawn[drawn].saturating_add(1);
        }
    }
}

/// What the filter applies to every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blocks {
    /// Per feature: bitmask of the cells (singles and pairs) where it is blocked.
    pub cells: Vec<[u64; MASK_WORDS]>,
    /// Features killed everywhere.
    pub killed: u64,
    /// Suspect single cells (bitmask): exploration runs there.
    pub suspect: u32,
    /// The rollout reverted to the old stack.
    pub reverted: bool,
    /// Per feature: when (seconds) its first block was set, for probation.
    pub since: Vec<u64>,
    /// Per feature: when (seconds) its last block was set: the probe waits
    /// `probe_after_s` from there.
    pub blocked_at: Vec<u64>,
    /// Features whose cell blocks are probed now (set at every sync).
    pub probing: u64,
    /// Per feature: the KPIs its blocks were raised on (bitmask): a lift must
    /// show each of them clean.
    pub kpis: Vec<u8>,
    /// Features with a lifted block, and those blocked again since: these are
    /// probed no more until the next epoch (a harm too small for the lift test
    /// to tell from none would otherwise flap: blocked, lifted, blocked).
    pub lifted: u64,
    pub relapsed: u64,
    /// The `probe_share` (parts per million) the probe tallies were drawn
    /// with: a push that changes it starts them over (two designs never pool).
    pub probe_ppm: u32,
    /// Features whose exploration split mismatched: no automated decisions.
    pub srm: u64,
    /// The slow cut in force (ms); 0 until learned.
    pub slow_ms: u32,
    /// Start (seconds) of the current screening window.
    pub window_s: u64,
    /// Per single cell: not suspected again before this time (seconds).
    pub quiet_until: Vec<u64>,
}

fn has(mask: &[u64; MASK_WORDS], c: usize) -> bool {
    mask.get(c / 64).is_some_and(|w| w & (1 << (c % 64)) != 0)
}

fn set(mask: &mut [u64; MASK_WORDS], c: usize) {
    if let Some(w) = mask.get_mut(c / 64) {
        *w |= 1 << (c % 64);
    }
}

fn unset(mask: &mut [u64; MASK_WORDS], c: usize) {
    if let Some(w) = mask.get_mut(c / 64) {
        *w &= !(1 << (c % 64));
    }
}

/// Blocks cell `c` in `mask`; returns the cell now blocked. A pair that
/// completes the pairs of one parent with every value of the other parent's
/// group blocks that parent in their place: the same requests, and a single
/// block takes its requests out of every other group's tallies exactly (a
/// pair's overlap with them is a triple nobody counts).
fn block_cell(mask: &mut [u64; MASK_WORDS], c: usize) -> usize {
    set(mask, c);
    let Some((a, b)) = parents(c) else { return c };
    for (parent, other) in [(a, b), (b, a)] {
        let pairs: Vec<usize> = siblings(other).filter_map(|x| cells::pair(parent, x)).collect();
        if pairs.iter().all(|&p| has(mask, p)) {
            pairs.into_iter().for_each(|p| unset(mask, p));
            set(mask, parent);
            return parent;
        }
    }
    c
}

impl Blocks {
    pub fn new(features: usize) -> Blocks {
        Blocks {
            cells: vec![[0; MASK_WORDS]; features],
            since: vec![0; features],
            blocked_at: vec![0; features],
            kpis: vec![0; features],
            quiet_until: vec![0; CELLS],
            ..Blocks::default()
        }
    }

    /// Is feature `f` blocked for a request in `cells`?
    pub fn blocks(&self, f: usize, cells: &[u8; GROUPS]) -> bool {
        if f < 64 && self.killed & (1 << f) != 0 {
            return true;
        }
        let Some(mask) = self.cells.get(f) else { return false };
        if mask.iter().all(|w| *w == 0) {
            return false;
        }
        if cells.iter().any(|&c| has(mask, usize::from(c))) {
            return true;
        }
        let pairs_blocked = mask[0] >> CELLS != 0 || mask[1..].iter().any(|w| *w != 0);
        pairs_blocked && expand(cells)[GROUPS..].iter().any(|&p| has(mask, usize::from(p)))
    }

    /// Is feature `f` blocked for a request in `cells` by a cell block that is
    /// probed now (not killed)?
    pub fn probes(&self, f: usize, cells: &[u8; GROUPS]) -> bool {
        f < 64 && self.probing & !self.killed & (1 << f) != 0 && self.blocks(f, cells)
    }

    /// Is feature `f` blocked for a request in `cells` by a cell block (not
    /// killed)? A probe of it still belongs to the block's tallies.
    pub fn probes_cell_block(&self, f: usize, cells: &[u8; GROUPS]) -> bool {
        f < 64 && self.killed & (1 << f) == 0 && self.blocks(f, cells)
    }

    /// Single cells where feature `f` is blocked.
    pub fn single_blocks(&self, f: usize) -> u32 {
        self.cells.get(f).map_or(0, |m| (m[0] & ((1 << CELLS) - 1)) as u32)
    }

    /// Is any of the request's cells suspect?
    pub fn exploring(&self, cells: &[u8; GROUPS]) -> bool {
        self.suspect != 0 && cells.iter().any(|&c| c < 32 && self.suspect & (1 << c) != 0)
    }

    /// The slow cut for a response (ms): the learned p90, within
    /// [`slow_floor_ms`](Policy::slow_floor_ms), [`slow_ms`](Policy::slow_ms).
    pub fn slow_ms(&self, policy: &Policy) -> u64 {
        match self.slow_ms {
            0 => policy.slow_ms,
            learned => u64::from(learned).max(policy.slow_floor_ms).min(policy.slow_ms),
        }
    }

    fn any_block(&self, f: usize) -> bool {
        self.cells.get(f).is_some_and(|m| m.iter().any(|w| *w != 0))
    }
}

/// Something [`evaluate`] changed, for the log and the stats. `evidence` is
/// the test's ln mixture ratio, `needed` the level it had to reach.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Suspect {
        cell: usize,
        kpi: usize,
        evidence: f64,
    },
    Cleared {
        cell: usize,
    },
    Blocked {
        feature: usize,
        cell: usize,
        kpi: usize,
        evidence: f64,
        needed: f64,
    },
    Killed {
        feature: usize,
        kpi: usize,
        evidence: f64,
    },
    Reverted {
        kpi: usize,
        evidence: f64,
    },
    Recovered {
        feature: usize,
    },
    /// The probe shows the harm gone in `cell` (a whole block, or a pair of a
    /// single block that stays blocked in its other pairs: narrowed).
    Lifted {
        feature: usize,
        cell: usize,
        evidence: f64,
        needed: f64,
    },
    /// A feature's exploration (or, `probe`, block-probe) draws do not match
    /// the configured `share` off.
    SampleRatioMismatch {
        feature: usize,
        probe: bool,
        drawn_off: u32,
        drawn: u32,
        share: f64,
        evidence: f64,
    },
}

/// The alarm levels (ln mixture ratio) of one evaluation, from the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// Block a feature in a single / pair cell.
    pub single: f64,
    pub pair: f64,
    /// Kill a feature everywhere; revert the rollout.
    pub kill: f64,
    pub revert: f64,
    /// Start exploring a cell (screening, not an action).
    pub screen: f64,
    /// Sample-ratio mismatch of a feature's exploration draws.
    pub srm: f64,
}

impl Levels {
    pub fn new(policy: &Policy, features: usize) -> Levels {
        let (f, k) = (features.max(1) as f64, KPIS as f64);
        let part = policy.alpha / 4.0;
        Levels {
            single: threshold(part / (f * CELLS as f64 * k)),
            pair: threshold(part / (f * cells::PAIRS as f64 * k)),
            kill: threshold(part / (f * k)),
            revert: threshold(part / k),
            screen: threshold(SCREEN_ALPHA / (CELLS as f64 * k)),
            // Two checks per feature: exploration draws and probe draws.
            srm: threshold(SRM_ALPHA / (2.0 * f)),
        }
    }

    fn block(&self, cell: usize) -> f64 {
        if cell < CELLS {
            self.single
        } else {
            self.pair
        }
    }
}

/// A significant cell for one feature.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    cell: usize,
    kpi: usize,
    evidence: f64,
    lcb: f64,
}

/// Runs every test on the merged `counts` and updates `blocks`. The tallies a
/// block makes stale (the blocked feature's arms) are reset in `counts`.
pub fn evaluate(policy: &Policy, counts: &mut Counts, blocks: &mut Blocks, now_s: u64) -> Vec<Event> {
    let mut events = Vec::new();
    if !policy.enabled {
        return events;
    }
    let features = [
        counts.arms.len(),
        counts.probes.len(),
        blocks.cells.len(),
        blocks.blocked_at.len(),
        blocks.kpis.len(),
    ]
    .into_iter()
    .fold(64, usize::min);
    let levels = Levels::new(policy, features);

    if let Recovery::Probation { seconds } = policy.recovery {
        for f in 0..features {
            let blocked = blocks.any_block(f) || blocks.killed & (1 << f) != 0;
            if blocked && now_s.saturating_sub(blocks.since[f]) >= seconds {
                blocks.cells[f] = [0; MASK_WORDS];
                blocks.killed &= !(1 << f);
                counts.arms[f] = Arms::new();
                counts.probes[f] = Arms::new();
                blocks.kpis[f] = 0;
                blocks.lifted &= !(1 << f);
                blocks.relapsed &= !(1 << f);
                events.push(Event::Recovered { feature: f });
            }
        }
    }

    learn_slow_cut(policy, counts, blocks);
    if blocks.window_s == 0 || now_s.saturating_sub(blocks.window_s) >= WINDOW_S {
        counts.stack[1] = counts.stack[0];
        counts.stack[0] = [[Tally::default(); ALL_CELLS]; 2];
        blocks.window_s = now_s.max(1);
    }

    // The probe's design: tallies drawn at another share start over.
    let ppm = (policy.probe_share * 1e6).round() as u32;
    if blocks.probe_ppm != ppm {
        blocks.probe_ppm = ppm;
        counts.probes.iter_mut().for_each(|p| *p = Arms::new());
    }

    // Single cells whose screening tallies a block changed this time.
    let mut explained: u32 = 0;
    for f in 0..features {
        let bit = 1u64 << f;
        // The sample-ratio checks: exploration draws off at `explore_share`,
        // probe draws off (blocked) at `1 − probe_share`.
        let splits = [
            (false, &counts.arms[f], policy.explore_share),
            (true, &counts.probes[f], 1.0 - policy.probe_share),
        ];
        for (probe, arms, share) in splits {
            let drawn_off = arms.drawn[1];
            let drawn = arms.drawn[0].saturating_add(drawn_off);
            let srm = ln_ratio(u64::from(drawn_off), u64::from(drawn), share);
            if blocks.srm & bit == 0 && share > 0.0 && share < 1.0 && srm >= levels.srm {
                blocks.srm |= bit;
                events.push(Event::SampleRatioMismatch {
                    feature: f,
                    probe,
                    drawn_off,
                    drawn,
                    share,
                    evidence: srm,
                });
            }
        }
        if blocks.killed & bit != 0 || blocks.srm & bit != 0 {
            continue;
        }
        counts.probes[f].keep_in_range();
        lift(policy, &levels, counts, blocks, f, &mut events);
        if let Some(c) = choose_block(policy, &levels, &counts.arms[f], &counts.traffic, &blocks.cells[f]) {
            if !blocks.any_block(f) {
                blocks.since[f] = now_s;
            }
            blocks.blocked_at[f] = now_s;
            blocks.kpis[f] |= 1 << c.kpi;
            blocks.relapsed |= blocks.lifted & bit;
            let cell = block_cell(&mut blocks.cells[f], c.cell);
            events.push(Event::Blocked {
                feature: f,
                cell,
                kpi: c.kpi,
                evidence: c.evidence,
                needed: levels.block(c.cell),
            });
            // Only the blocked traffic leaves the comparison: the rest of the
            // feature's evidence (other cells, other harms) is kept.
            counts.arms[f].forget(cell);
            // The block's own probe starts with it.
            counts.probes[f].clear_inside(cell);
            // The screen too: the harm just explained must not keep (or make)
            // cells suspect for as long as it stays in the window.
            explained |= counts.forget_screened(cell);
            if blocks.single_blocks(f).count_ones() >= policy.kill_after_cells {
                blocks.killed |= bit;
                counts.probes[f] = Arms::new();
                events.push(Event::Killed { feature: f, kpi: c.kpi, evidence: c.evidence });
            }
            continue;
        }
        // Overall, on the traffic the feature still serves (since its last block).
        let [on, off] = counts.arms[f].cells[OVERALL];
        let total = siblings(0).map(|c| counts.traffic[c]).sum::<u32>().max(1);
        let all_n = f64::from(on.n + off.n).max(1.0);
        for k in 0..KPIS {
            let e = evidence(on, off, k);
            // Worse everywhere, not just in one cell that a block will take:
            // the harm remains significant (half the level) outside any cell
            // that holds less than half the traffic; outside a bigger one (say
            // history=low, nearly everyone) it holds at least half the excess
            // an even spread would put there.
            let all_excess = excess(on, off, k);
            let spread = || {
                (0..CELLS).all(|c| {
                    let [c_on, c_off] = counts.arms[f].cells[c];
                    let (r_on, r_off) = (on.minus(c_on), off.minus(c_off));
                    if 2 * counts.traffic[c] < total {
                        evidence(r_on, r_off, k) >= levels.kill / 2.0
                    } else {
                        let rest_share = f64::from(r_on.n + r_off.n) / all_n;
                        excess(r_on, r_off, k) >= 0.5 * rest_share * all_excess
                    }
                })
            };
            if policy.enough(on, off) && e >= levels.kill && spread() {
                blocks.killed |= bit;
                blocks.since[f] = now_s;
                events.push(Event::Killed { feature: f, kpi: k, evidence: e });
                counts.arms[f] = Arms::new();
                counts.probes[f] = Arms::new();
                break;
            }
        }
    }

    screen(policy, &levels, counts, blocks, now_s, explained, &mut events);

    // The probe runs in blocks whose last block is `probe_after_s` old.
    blocks.probing = 0;
    if policy.probe_share > 0.0 {
        for f in 0..features {
            let bit = 1u64 << f;
            let settled = now_s.saturating_sub(blocks.blocked_at[f]) >= policy.probe_after_s;
            if blocks.any_block(f) && (blocks.killed | blocks.srm | blocks.relapsed) & bit == 0 && settled {
                blocks.probing |= bit;
            }
        }
    }

    let (old, new) = (counts.baseline[0], counts.baseline[1]);
    for k in 0..KPIS {
        let e = evidence(new, old, k);
        if !blocks.reverted && policy.enough(new, old) && e >= levels.revert {
            blocks.reverted = true;
            events.push(Event::Reverted { kpi: k, evidence: e });
        }
    }
    events
}

/// The probe's evidence that the harm of a block is gone in cell `c`: the
/// lowest over the KPIs with events ([`ln_no_harm`], against a harm of
/// [`PROBE_RHO`]); `None` while an arm is short of `min_samples`, or one of
/// the KPIs the feature was blocked on (`kpis`) has had no event — a ratio
/// test cannot tell a harm on it gone from one not seen yet.
fn gone(policy: &Policy, probe: &Arms, c: usize, kpis: u8) -> Option<f64> {
    let [on, off] = *probe.cells.get(c)?;
    if !policy.enough(on, off) {
        return None;
    }
    let pi = f64::from(on.n) / (f64::from(on.n) + f64::from(off.n));
    let counts = (0..KPIS).map(|k| (k, u64::from(on.bad[k]), u64::from(on.bad[k]) + u64::from(off.bad[k])));
    if counts.clone().any(|(k, _, bad)| bad == 0 && kpis & (1 << k) != 0) {
        return None;
    }
    counts
        .filter(|&(_, _, bad)| bad > 0)
        .map(|(_, bad_on, bad)| ln_no_harm(bad_on, bad, pi, PROBE_RHO))
        .reduce(f64::min)
}

/// A blocked single cell's pairs along one other attribute: the ones its
/// probe shows clean (with their evidence), the others, and the clean ones'
/// traffic.
#[derive(Default)]
struct Split {
    clean: Vec<(usize, f64)>,
    still: Vec<usize>,
    size: u64,
}

/// Lifts what feature `f`'s probe shows clean, each test at its block's
/// level: a blocked cell whose harm is gone; in a blocked single cell, the
/// pairs along one other attribute that are clean (the attribute whose clean
/// pairs hold the most traffic), the others staying blocked — the block
/// narrowed to where its harm is. A lifted cell's probe tallies start over.
/// Nothing is lifted without a running probe, nor for a feature blocked again
/// after a lift (`Blocks::relapsed`).
fn lift(
    policy: &Policy,
    levels: &Levels,
    counts: &mut Counts,
    blocks: &mut Blocks,
    f: usize,
    events: &mut Vec<Event>,
) {
    let bit = 1u64 << f;
    if policy.probe_share <= 0.0 || blocks.relapsed & bit != 0 {
        return; // no probe running: blocks stay as they are
    }
    let (mut mask, kpis) = (blocks.cells[f], blocks.kpis[f]);
    let mut lifted: Vec<(usize, f64, f64)> = Vec::new();
    let probe = &counts.probes[f];
    for c in (0..ALL_CELLS).filter(|&c| has(&blocks.cells[f], c)) {
        if let Some(e) = gone(policy, probe, c, kpis).filter(|&e| e >= levels.block(c)) {
            unset(&mut mask, c);
            lifted.push((c, e, levels.block(c)));
            continue;
        }
        if c >= CELLS {
            continue;
        }
        // A pair another block also covers (its other parent, or itself) stays.
        let covered = |p: usize| {
            has(&blocks.cells[f], p)
                || parents(p).is_some_and(|(a, b)| has(&blocks.cells[f], if a == c { b } else { a }))
        };
        let split = |g: usize| {
            let mut out = Split::default();
            for p in siblings(cells::GROUP_START[g]).filter_map(|o| cells::pair(c, o)) {
                match gone(policy, probe, p, kpis).filter(|&e| e >= levels.pair && !covered(p)) {
                    Some(e) => {
                        out.clean.push((p, e));
                        out.size += u64::from(counts.traffic.get(p).copied().unwrap_or(0));
                    }
                    None => out.still.push(p),
                }
            }
            out
        };
        let best = (0..GROUPS)
            .filter(|&g| g != cells::group(c))
            .map(split)
            .filter(|s| !s.clean.is_empty())
            .reduce(|a, b| if b.size > a.size { b } else { a });
        if let Some(Split { clean, still, .. }) = best {
            unset(&mut mask, c);
            still.into_iter().for_each(|p| set(&mut mask, p));
            lifted.extend(clean.into_iter().map(|(p, e)| (p, e, levels.pair)));
        }
    }
    blocks.cells[f] = mask;
    if !lifted.is_empty() {
        blocks.lifted |= bit;
    }
    for (cell, evidence, needed) in lifted {
        counts.probes[f].clear_inside(cell);
        events.push(Event::Lifted { feature: f, cell, evidence, needed });
    }
}

/// The cell to block feature `arms` in now, if any: among the significant
/// cells the one with the largest lower bound on the excess, then narrowed to
/// a pair inside it when the pair holds the harm and the rest of the cell is
/// clean; a broad cell is not blocked while the rest of it is clean and a pair
/// inside it that holds most of its excess is half-way to its own level.
fn choose_block(
    policy: &Policy,
    levels: &Levels,
    arms: &Arms,
    traffic: &[u32],
    blocked: &[u64; MASK_WORDS],
) -> Option<Candidate> {
    let test = |cell: usize, k: usize| test_cell(policy, arms, cell, k);
    let size = |c: usize| u64::from(traffic.get(c).copied().unwrap_or(0));
    // A pair that holds (nearly) all of a parent's traffic is that parent.
    let same_as_parent = |p: usize| parents(p).is_some_and(|(a, b)| 10 * size(p) >= 9 * size(a).min(size(b)));
    let mut best: Option<Candidate> = None;
    for cell in 0..ALL_CELLS {
        if has(blocked, cell) || parents(cell).is_some_and(|(a, b)| has(blocked, a) || has(blocked, b)) {
            continue;
        }
        if cell >= CELLS && same_as_parent(cell) {
            continue;
        }
        for k in 0..KPIS {
            let (ok, e, lcb) = test(cell, k);
            if ok && e >= levels.block(cell) && best.is_none_or(|b| lcb > b.lcb) {
                best = Some(Candidate { cell, kpi: k, evidence: e, lcb });
            }
        }
    }
    let mut best = best?;
    if best.cell >= CELLS {
        match explain_pair(policy, levels, arms, traffic, blocked, best) {
            Explained::Pair => return Some(best),
            Explained::Wait => return None,
            // A single cell explains it: narrowed below like any other.
            Explained::Single(c) => best = c,
        }
    }
    narrow(policy, levels, arms, traffic, best)
}

/// A significant single cell `best`: is the harm really in a narrower cell
/// inside it — a pair with another attribute, or (when this cell holds nearly
/// everyone, e.g. history=low) that other attribute's own cell? A narrower
/// single is asked the same in turn (a harm on bots, nearly all `read`, inside
/// `history=low`: history=low → read → bot); each step is smaller. `None`:
/// wait for a narrower cell on its way to its level.
fn narrow(
    policy: &Policy,
    levels: &Levels,
    arms: &Arms,
    traffic: &[u32],
    mut best: Candidate,
) -> Option<Candidate> {
    for _ in 0..CELLS {
        match narrow_single(policy, levels, arms, traffic, best) {
            Narrowed::To(c) if c.cell < CELLS && c.cell != best.cell => best = c,
            Narrowed::To(c) => return Some(c),
            Narrowed::Wait => return None,
        }
    }
    Some(best)
}

/// What a significant single cell's harm narrows to (see [`narrow_single`]).
enum Narrowed {
    /// Block this cell (the same one when nothing narrower explains the harm).
    To(Candidate),
    /// A narrower cell holding most of the excess is on its way to its level.
    Wait,
}

/// One narrowing step of a significant single cell `best`: a narrower cell
/// inside it (a pair with another attribute, or that attribute's own cell
/// when the pair is it) that is significant while the rest is confidently
/// clean; else a wait for one that holds most of the excess concentrated and
/// is half-way to its level (unless the broad evidence is overwhelming).
fn narrow_single(
    policy: &Policy,
    levels: &Levels,
    arms: &Arms,
    traffic: &[u32],
    best: Candidate,
) -> Narrowed {
    let test = |cell: usize, k: usize| test_cell(policy, arms, cell, k);
    let size = |c: usize| u64::from(traffic.get(c).copied().unwrap_or(0));
    let (s, k) = (best.cell, best.kpi);
    let [s_on, s_off] = arms.cells[s];
    let excess = |on: Tally, off: Tally| excess(on, off, k);
    let s_excess = excess(s_on, s_off);
    let mut narrow: Option<(Candidate, f64)> = None;
    for other in 0..CELLS {
        let Some(p) = cells::pair(s, other) else { continue };
        if 10 * size(p) >= 9 * size(s) {
            continue; // `other` holds (nearly) all of this cell: nothing narrower
        }
        // The narrower cell: the pair, or `other` itself when the pair is it.
        let (narrower, level) =
            if 10 * size(p) >= 9 * size(other) { (other, levels.single) } else { (p, levels.pair) };
        let [p_on, p_off] = arms.cells[p];
        // Confined: the rest of this cell is confidently clean — its excess rate
        // (upper bound) below half the narrower cell's.
        let (r_on, r_off) = (s_on.minus(p_on), s_off.minus(p_off));
        let rest_ucb = -excess_lcb(r_off, r_on, k);
        let [n_on, n_off] = arms.cells[narrower];
        let narrow_rate = n_on.rate(k) - n_off.rate(k);
        let confined = rest_ucb < 0.5 * narrow_rate && evidence(r_on, r_off, k) < levels.single / 2.0;
        let share = excess(p_on, p_off) / s_excess.max(1e-9);
        let (ok, e, lcb) = test(narrower, k);
        if ok && e >= level && confined {
            return Narrowed::To(Candidate { cell: narrower, kpi: k, evidence: e, lcb });
        }
        // Most of the excess in a narrower cell, concentrated there (at least
        // twice its share of the traffic), half-way to its level: worth
        // waiting for. The share is of all new-stack traffic: randomised
        // requests come from suspect cells only, so their mix says little
        // about the cells' sizes.
        let traffic_share = size(p) as f64 / size(s).max(1) as f64;
        let concentrated = share >= 0.5 && share >= 2.0 * traffic_share;
        if concentrated && e >= level / 2.0 && narrow.is_none_or(|(_, s)| share > s) {
            narrow = Some((Candidate { cell: narrower, kpi: k, evidence: e, lcb }, share));
        }
    }
    match narrow {
        // Wait for the narrower cell, unless the broad evidence is overwhelming.
        Some(_) if best.evidence < 2.0 * levels.single => Narrowed::Wait,
        _ => Narrowed::To(best),
    }
}

/// One cell's harm test for a feature on KPI `k`: (both arms have
/// `min_samples`, evidence, lower bound of the excess rate).
fn test_cell(policy: &Policy, arms: &Arms, cell: usize, k: usize) -> (bool, f64, f64) {
    let [on, off] = arms.cells[cell];
    (policy.enough(on, off), evidence(on, off, k), excess_lcb(on, off, k))
}

/// What explains a significant pair's harm (see [`explain_pair`]).
enum Explained {
    Pair,
    Single(Candidate),
    Wait,
}

/// A significant pair is blocked only if no single cell explains its harm
/// better: a parent in which the pair's excess is not concentrated (at least
/// twice its share of the parent's traffic), or a single cell of another group,
/// smaller than the pair, holding most of its excess. The smallest such cell
/// decides: blocked instead when significant itself, waited for when half-way
/// (unless the pair's evidence is overwhelming).
fn explain_pair(
    policy: &Policy,
    levels: &Levels,
    arms: &Arms,
    traffic: &[u32],
    blocked: &[u64; MASK_WORDS],
    best: Candidate,
) -> Explained {
    let k = best.kpi;
    let excess = |[on, off]: [Tally; 2]| excess(on, off, k);
    // Sizes from all new-stack traffic, not the randomised (suspect-only) mix.
    let size = |c: usize| f64::from(traffic.get(c).copied().unwrap_or(0));
    let (e_pair, n_pair) = (excess(arms.cells[best.cell]), size(best.cell));
    let parents = parents(best.cell);
    let mut explaining: Vec<usize> = (0..CELLS)
        .filter(|&c| !has(blocked, c))
        .filter(|&c| {
            let (e_s, n_s) = (excess(arms.cells[c]), size(c));
            if parents.is_some_and(|(a, b)| a == c || b == c) {
                e_pair < 2.0 * (n_pair / n_s.max(1.0)) * e_s
            } else {
                e_s >= 0.5 * e_pair && n_s < n_pair
            }
        })
        .collect();
    explaining.sort_by(|&a, &b| size(a).total_cmp(&size(b)));
    let overwhelming = best.evidence >= 2.0 * levels.pair;
    for c in explaining {
        let (enough, e, lcb) = test_cell(policy, arms, c, k);
        if enough && e >= levels.single {
            return Explained::Single(Candidate { cell: c, kpi: k, evidence: e, lcb });
        }
        if e >= levels.single / 2.0 && !overwhelming {
            return Explained::Wait;
        }
    }
    Explained::Pair
}

/// Learns the slow cut: the control requests' p90 (bucket bound) — or, until
/// there are enough of them (e.g. at 100% rollout), every request's — never
/// above `slow_ms`. Any cut keeps the tests valid (both arms of a split are
/// judged against the same one); the control's makes a regression stand out.
/// Old history fades (halved past 50,000 requests).
fn learn_slow_cut(policy: &Policy, counts: &mut Counts, blocks: &mut Blocks) {
    for h in counts.latency.iter_mut() {
        if h.iter().map(|&n| u64::from(n)).sum::<u64>() > 50_000 {
            for n in h.iter_mut() {
                *n /= 2;
            }
        }
    }
    let Some(h) = counts
        .latency
        .iter()
        .find(|h| h.iter().map(|&n| u64::from(n)).sum::<u64>() >= u64::from(LATENCY_MIN))
    else {
        return;
    };
    let total: u64 = h.iter().map(|&n| u64::from(n)).sum();
    let mut cum = 0u64;
    for (i, &n) in h.iter().enumerate() {
        cum += u64::from(n);
        if cum as f64 >= SLOW_QUANTILE * total as f64 {
            let bound = LATENCY_BOUNDS.get(i).map_or(policy.slow_ms, |&b| u64::from(b));
            blocks.slow_ms = bound.min(policy.slow_ms).min(u64::from(u32::MAX)) as u32;
            return;
        }
    }
}

/// The screening evidence of cell `c` on the windowed stack tallies — its new-stack
/// requests against the old stack's and against the rest of the new stack's —
/// as (KPI, ln M) of its strongest KPI.
fn screening(counts: &Counts, c: usize) -> (usize, f64) {
    let (old, new) = (counts.screened(0, c), counts.screened(1, c));
    let mut rest = Tally::default();
    for o in siblings(c).filter(|&o| o != c) {
        rest.add(counts.screened(1, o));
    }
    (0..KPIS).map(|k| (k, evidence(new, old, k).max(evidence(new, rest, k)))).fold((0, 0.0), |best, x| {
        if x.1 > best.1 {
            x
        } else {
            best
        }
    })
}

/// Suspect screening on the windowed stack tallies, the exploration budget,
/// and the end of exploration.
fn screen(
    policy: &Policy,
    levels: &Levels,
    counts: &mut Counts,
    blocks: &mut Blocks,
    now_s: u64,
    explained: u32,
    events: &mut Vec<Event>,
) {
    if policy.explore_share <= 0.0 {
        // Exploration off: a suspect could never be explored or cleared, and
        // one adopted from before the push that turned it off goes.
        let suspect = std::mem::take(&mut blocks.suspect);
        events.extend((0..CELLS).filter(|&c| suspect & (1 << c) != 0).map(|cell| Event::Cleared { cell }));
        return;
    }
    let total_new: u32 = siblings(0).map(|c| counts.screened(1, c).n).sum();
    let shares: [f64; CELLS] =
        std::array::from_fn(|c| f64::from(counts.screened(1, c).n) / f64::from(total_new.max(1)));
    let share = |c: usize| shares[c];
    let mut used: f64 = (0..CELLS).filter(|&c| blocks.suspect & (1 << c) != 0).map(share).sum();

    // End of exploration: enough explored requests and nothing building up;
    // or a block explained the excess (the screen, without the blocked
    // requests, no longer flags the cell: it may flag it again, no quiet time).
    for c in 0..CELLS {
        if blocks.suspect & (1 << c) == 0 {
            continue;
        }
        let by_block = explained & (1 << c) != 0 && screening(counts, c).1 < levels.screen;
        let explored = counts.explored[c];
        let building = || {
            (0..counts.arms.len()).any(|f| {
                let [on, off] = counts.arms[f].cells[c];
                (0..KPIS).any(|k| evidence(on, off, k) >= levels.single / 2.0)
            })
        };
        let ended = explored >= EXPLORE_MAX || (explored >= EXPLORE_CLEAR && !building());
        if by_block || ended {
            blocks.suspect &= !(1 << c);
            if !by_block {
                blocks.quiet_until[c] = now_s + QUIET_S;
            }
            used -= share(c);
            events.push(Event::Cleared { cell: c });
        }
    }

    let mut found: Vec<(usize, usize, f64)> = Vec::new();
    for c in 0..CELLS {
        if blocks.suspect & (1 << c) != 0 || now_s < blocks.quiet_until[c] {
            continue;
        }
        let (k, e) = screening(counts, c);
        if counts.screened(1, c).n >= policy.min_samples && e >= levels.screen {
            found.push((c, k, e));
        }
    }
    found.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (c, k, e) in found {
        if used + share(c) > policy.explore_budget && used > 0.0 {
            // A suspect the screen would no longer flag (its harm went away, e.g.
            // denied by configuration) gives its budget to this one, weakest first.
            let mut stale: Vec<(usize, f64)> = (0..CELLS)
                .filter(|&s| blocks.suspect & (1 << s) != 0)
                .map(|s| (s, screening(counts, s).1))
                .filter(|&(_, e)| e < levels.screen)
                .collect();
            stale.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (s, _) in stale {
                if used + share(c) <= policy.explore_budget {
                    break;
                }
                blocks.suspect &= !(1 << s);
                used -= share(s);
                events.push(Event::Cleared { cell: s });
            }
        }
        if used + share(c) > policy.explore_budget && used > 0.0 {
            break; // over budget: the strongest suspects explore first, the rest wait
        }
        used += share(c);
        blocks.suspect |= 1 << c;
        counts.explored[c] = 0;
        events.push(Event::Suspect { cell: c, kpi: k, evidence: e });
    }
}

#[cfg(test)]
mod tests;

//! Engine: the whole per-request decision — profile → model → flags → routing —
//! as one pure function over a compiled [`Config`] and a request's headers.
//!
//! Fail-open: if the model fails on a request (or no run state could be made),
//! the request still gets a stack, every feature takes its configured `fallback`,
//! and [`Decision::model_ok`] is false so the filter counts it.

use crate::config::Config;
use crate::flags::{FlagDecision, FlagInputs, Override, Reason};
use crate::hash::stable_hash;
use crate::headers::Headers;
use crate::model::{Impact, Session};
use crate::profile::{self, Profile};
use crate::rollback::{self, Blocks, GROUPS};
use crate::routing::{Stack, BUCKETS};
use crate::segments;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub stack: Stack,
    /// The user's rollout bucket (`0..routing::BUCKETS`), when one was computed.
    pub bucket: Option<u32>,
    pub profile: Profile,
    /// False when the model could not score this request (fallbacks applied).
    pub model_ok: bool,
    /// One entry per configured feature, in configuration order.
    pub flags: Vec<FlagDecision>,
    /// Bit `i` set when the user is in feature `i`'s A/B holdout (new stack only).
    pub holdout: u64,
    /// The request's rollback cells (see [`crate::rollback::cells`]).
    pub cells: [u8; GROUPS],
    /// Bit `i` set when feature `i`'s on/off state was random (holdout or
    /// exploration): the request counts in the feature's on/off comparison.
    pub randomised: u64,
    /// Of those, features whose state was drawn for exploration (the draws the
    /// sample-ratio check counts)…
    pub explored: u64,
    /// …and features randomised by their sticky user holdout (a request can be
    /// both: a user outside the holdout whose feature was then explored).
    pub held: u64,
    /// …and features blocked here whose block's probe drew them (kept on or
    /// left blocked, `rollback.probe_share`; never also explored).
    pub probed: u64,
    /// Of the explored or probed features, those the draw turned off.
    pub drawn_off: u64,
    /// Automated rollback has reverted the rollout to the old stack.
    pub reverted: bool,
    /// The decision id: augur's own per-request random draw (never anything
    /// the client sent), written as 16 hex digits by [`Decision::write_id`].
    /// The request's exploration and `per_request` draws are keyed on it.
    pub id: u64,
}

impl Default for Decision {
    fn default() -> Self {
        Decision {
            stack: Stack::Old,
            bucket: None,
            profile: Profile::default(),
            model_ok: false,
            flags: Vec::new(),
            holdout: 0,
            cells: [0; GROUPS],
            randomised: 0,
            explored: 0,
            held: 0,
            probed: 0,
            drawn_off: 0,
            reverted: false,
            id: 0,
        }
    }
}

impl Decision {
    /// Bit `i` set when feature `i` is on.
    pub fn enabled_mask(&self) -> u64 {
        self.flags.iter().enumerate().filter(|(_, f)| f.on).fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The probability, by design, that randomised feature `i` was on for this
    /// request: kept out of the holdout (`1 − holdout`), kept on by the
    /// exploration draw (`1 − explore_share`) or by its block's probe
    /// (`probe_share`). Designs differ across requests
    /// (exploration runs in suspect cells only), so an analysis that pools
    /// randomised records must weigh or stratify by it; the record carries it.
    /// `None` when feature `i` was not randomised.
    pub fn p_on(&self, config: &Config, i: usize) -> Option<f64> {
        if i >= 64 || self.randomised & (1 << i) == 0 {
            return None;
        }
        let mut p = 1.0;
        if self.held & (1 << i) != 0 {
            let holdout = config.rules.features.get(i).map_or(0, |r| r.holdout);
            p *= 1.0 - f64::from(holdout) / f64::from(BUCKETS);
        }
        if self.explored & (1 << i) != 0 {
            p *= 1.0 - config.rollback.explore_share.clamp(0.0, 1.0);
        }
        if self.probed & (1 << i) != 0 {
            p *= config.rollback.probe_share.clamp(0.0, 1.0);
        }
        Some(p)
    }

    /// Appends the decision id (16 lowercase hex digits) to `out`.
    pub fn write_id(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in (0..16).rev() {
            out.push(char::from(HEX[((self.id >> (i * 4)) & 0xf) as usize]));
        }
    }

    /// Names of the features that are on, in configuration order.
    pub fn enabled<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = &'a str> + 'a {
        config.feature_names().zip(&self.flags).filter(|(_, d)| d.on).map(|(n, _)| n)
    }
}

/// Per-worker state: the model run state and scratch buffers, reused across
/// requests so the hot path does not rebuild plans or reallocate.
pub struct Worker {
    session: Option<Session>,
    impacts: Vec<Impact>,
    /// Automated-rollback state, refreshed from shared data on every tick.
    pub blocks: Blocks,
    /// Secret per-worker seed and request counter: each request's draw is
    /// `stable_hash(seed, counter)`, so a client can neither choose nor
    /// replay it (it used to be keyed on the client's `x-request-id`).
    seed: u64,
    draws: u64,
}

/// A random seed from the host (WASI `random_get` in the filter, the OS natively).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x0061_7567_7572);
    h.finish()
}

impl Worker {
    /// Makes a worker for `config`. A model whose run state cannot be created
    /// leaves the worker unscored (every request uses fallbacks) rather than
    /// failing the configuration, which was already validated.
    pub fn new(config: &Config) -> Worker {
        Worker::with_seed(config, fresh_seed())
    }

    /// [`Worker::new`] with a fixed seed (reproducible draws: tests, benches).
    pub fn with_seed(config: &Config, seed: u64) -> Worker {
        Worker {
            session: config.model.session().ok(),
            impacts: Vec::with_capacity(config.model.features().len()),
            blocks: Blocks::new(config.rules.features.len()),
            seed,
            draws: 0,
        }
    }

    /// The next request's draw.
    fn draw(&mut self) -> u64 {
        self.draws = self.draws.wrapping_add(1);
        stable_hash(&[&self.seed.to_le_bytes(), &self.draws.to_le_bytes()])
    }
}

/// Bit `i` set when `user` is in feature `i`'s holdout. Sticky: a stable hash of
/// the rollout salt, the feature name and the user, independent of the stack bucket.
fn holdout_mask(config: &Config, user: &[u8]) -> u64 {
    let mut mask = 0;
    for (i, rule) in config.rules.features.iter().enumerate() {
        if rule.holdout > 0 {
            let h = stable_hash(&[config.rollout.salt.as_bytes(), b"holdout", rule.name.as_bytes(), user]);
            if (h % u64::from(BUCKETS)) < u64::from(rule.holdout) {
                mask |= 1 << i;
            }
        }
    }
    mask
}

/// Features drawn for one randomised step (`what`: exploration, a block's
/// probe): each feature independently with probability `share`, from a hash of
/// the request's own draw.
fn draw_features(config: &Config, what: &[u8], share: f64, draw: u64) -> u64 {
    let key = draw.to_le_bytes();
    let key = &key[..];
    let cut = (share.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut mask = 0;
    for (i, rule) in config.rules.features.iter().enumerate() {
        if stable_hash(&[what, rule.name.as_bytes(), key]) < cut {
            mask |= 1 << i;
        }
    }
    mask
}

/// Decides one request into `out` (reusing its allocations).
pub fn decide(config: &Config, worker: &mut Worker, req: &(impl Headers + ?Sized), out: &mut Decision) {
    out.id = worker.draw();
    profile::encode(&config.profile, req, &mut out.profile);

    out.cells = rollback::cells(&out.profile);
    out.model_ok = match worker.session.as_mut() {
        Some(s) => s.predict(&out.profile.vector, &mut worker.impacts).is_ok(),
        None => false,
    };
    let impacts = out.model_ok.then_some(worker.impacts.as_slice());
    // Once, after inference: a predicted segment needs the model's output.
    out.profile.segments = segments::evaluate(
        &config.segments,
        &config.profile,
        &out.profile,
        req,
        impacts,
        &config.rules.weights,
    );

    out.reverted = worker.blocks.reverted;
    (out.stack, out.bucket) = if config.global_off || out.reverted {
        (Stack::Old, None)
    } else {
        let user = req.header_bytes(&config.profile.user_header);
        let segments = out.profile.segments;
        let threshold = config
            .rollout_by_segment
            .iter()
            .find(|(seg, _)| segments & (1 << seg) != 0)
            .map_or(config.rollout.threshold, |(_, t)| *t);
        config.rollout.choose_with(threshold, user, Some(&out.id.to_le_bytes()))
    };

    let holdout_user =
        req.header_bytes(&config.profile.user_header).filter(|u| !u.is_empty() && out.stack == Stack::New);
    let holdout = holdout_user.map_or(0, |user| holdout_mask(config, user));
    out.holdout = holdout;
    let (mut rolled_back, mut explore_off, mut exploring) = (0, 0, false);
    // Features whose block here is probed, and of those the ones the probe keeps on.
    let (mut probe, mut probe_on) = (0u64, 0u64);
    if out.stack == Stack::New && config.rollback.enabled {
        for f in 0..config.rules.features.len() {
            if worker.blocks.blocks(f, &out.cells) {
                rolled_back |= 1 << f;
                if worker.blocks.probes(f, &out.cells) {
                    probe |= 1 << f;
                }
            }
        }
        if probe != 0 {
            probe_on = probe & draw_features(config, b"probe", config.rollback.probe_share, out.id);
            rolled_back &= !probe_on;
        }
        // `explore_share: 0` turns exploration off: a draw that never turns a
        // feature off randomises nothing. A probed feature is not also explored.
        exploring = config.rollback.explore_share > 0.0 && worker.blocks.exploring(&out.cells);
        if exploring {
            explore_off = draw_features(config, b"explore", config.rollback.explore_share, out.id) & !probe;
        }
    }
    let input = FlagInputs {
        global_off: config.global_off,
        impacts,
        segments: out.profile.segments,
        holdout,
        rolled_back,
        explore_off,
        probe_on,
    };
    config.rules.decide(input, &mut out.flags);
    out.randomised = 0;
    out.explored = 0;
    out.held = 0;
    out.probed = 0;
    out.drawn_off = 0;
    for (i, (flag, rule)) in out.flags.iter().zip(&config.rules.features).enumerate() {
        let bit = 1 << i;
        let auto = rule.override_ == Override::Auto;
        // The probe's two arms: left blocked (the rules put it on) or kept on.
        let probed =
            probe & bit != 0 && auto && (flag.reason == Reason::RolledBack || flag.reason.is_eligible());
        let explored = exploring && auto && flag.reason.is_eligible() && !probed;
        // A holdout randomises `override: on` features too (ForcedOn is their on arm).
        let held = rule.holdout > 0
            && holdout_user.is_some()
            && (flag.reason.is_eligible() || flag.reason == Reason::ForcedOn || probed);
        if held {
            out.held |= bit;
        }
        if explored || held || probed {
            out.randomised |= bit;
            if explored {
                out.explored |= bit;
                out.drawn_off |= explore_off & bit;
            }
            if probed {
                out.probed |= bit;
                out.drawn_off |= bit & !probe_on;
            }
        }
    }

    if out.stack == Stack::Old && !config.global_off {
        for f in out.flags.iter_mut() {
            f.on = false;
            f.reason = Reason::OldStack;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestConfig;
    use serde_json::json;

    fn checkout(pct: f64) -> TestConfig {
        TestConfig::rollout(pct)
            .on("new_checkout")
            .feature("one_click_pay", json!({"override": "on", "requires": ["new_checkout"]}))
    }

    fn config(pct: f64) -> Config {
        checkout(pct).compile().unwrap()
    }

    fn headers(user: &str) -> Vec<(String, String)> {
        vec![("x-user-id".into(), user.into()), (":path".into(), "/api/checkout".into())]
    }

    #[test]
    fn new_stack_gets_features_old_stack_gets_none() {
        let c = config(50.0);
        let mut w = Worker::new(&c);
        let mut seen = [false, false];
        for i in 0..200 {
            let mut d = Decision::default();
            decide(&c, &mut w, &headers(&format!("u{i}")), &mut d);
            assert!(d.model_ok);
            assert_eq!(d.flags.len(), 2);
            match d.stack {
                Stack::New => {
                    seen[0] = true;
                    assert_eq!(d.enabled(&c).collect::<Vec<_>>(), ["new_checkout", "one_click_pay"]);
                }
                Stack::Old => {
                    seen[1] = true;
                    assert!(d.flags.iter().all(|f| !f.on && f.reason == Reason::OldStack));
                }
            }
        }
        assert_eq!(seen, [true, true]);
    }

    /// The chance of `on` by design, per randomised feature: holdout and
    /// exploration multiply when both apply.
    #[test]
    fn p_on_is_the_design_probability_of_each_randomised_feature() {
        let c = TestConfig::rollout(100.0)
            .feature("new_checkout", json!({"holdout": 10}))
            .feature("search_v2", json!({}))
            .set("rollback.explore_share", 0.25)
            .compile()
            .unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        decide(&c, &mut w, &headers("u1"), &mut d);
        assert_eq!((d.p_on(&c, 0), d.p_on(&c, 1)), (Some(0.9), None), "holdout only: {d:?}");
        w.blocks.suspect = (1 << rollback::CELLS) - 1; // every cell explores
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            decide(&c, &mut w, &headers(&format!("u{i}")), &mut d);
            assert_eq!(d.p_on(&c, 1), Some(0.75));
            let p = d.p_on(&c, 0).unwrap();
            seen.insert((p * 1e4).round() as u32);
            assert_eq!(d.held, 1, "every keyed user is in h's holdout design, held or not");
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [6750], "0.9 × 0.75 for every eligible user");

        // `explore_share: 0`: a suspect cell randomises nothing (a chance of 1 is no draw).
        let off = TestConfig::rollout(100.0)
            .feature("search_v2", json!({}))
            .set("rollback.explore_share", 0.0)
            .compile()
            .unwrap();
        let mut w = Worker::new(&off);
        w.blocks.suspect = (1 << rollback::CELLS) - 1;
        decide(&off, &mut w, &headers("u1"), &mut d);
        assert_eq!((d.explored, d.randomised, d.p_on(&off, 0)), (0, 0, None));
    }

    /// A blocked feature is probed only once its blocks are settled
    /// (`Blocks::probing`): kept on for `probe_share` of the blocked requests,
    /// both arms randomised with that design, never explored too; a killed
    /// feature is not probed.
    #[test]
    fn a_settled_block_is_probed_at_probe_share_and_not_explored() {
        let c = TestConfig::rollout(100.0)
            .permissive("search_v2")
            .set("rollback.probe_share", 0.25)
            .compile()
            .unwrap();
        let mut w = Worker::with_seed(&c, 9);
        let mut d = Decision::default();
        decide(&c, &mut w, &headers("u1"), &mut d);
        let everywhere = (0..rollback::CELLS).fold([0u64; rollback::cells::MASK_WORDS], |mut m, cell| {
            m[cell / 64] |= 1 << (cell % 64);
            m
        });
        w.blocks.cells[0] = everywhere;
        w.blocks.suspect = (1 << rollback::CELLS) - 1; // every cell explores, too
        let mut reasons = std::collections::BTreeMap::new();
        for probing in [false, true] {
            w.blocks.probing = u64::from(probing);
            for i in 0..2000 {
                decide(&c, &mut w, &headers(&format!("u{i}")), &mut d);
                *reasons.entry((probing, d.flags[0].reason.as_str())).or_insert(0) += 1;
                assert_eq!(d.explored, 0, "a blocked feature is never explored");
                if probing {
                    assert_eq!((d.probed, d.p_on(&c, 0)), (1, Some(0.25)), "{d:?}");
                    assert_eq!(d.drawn_off, u64::from(!d.flags[0].on));
                } else {
                    assert_eq!((d.probed, d.randomised, d.p_on(&c, 0)), (0, 0, None));
                }
            }
        }
        assert_eq!(reasons.get(&(false, "rolled_back")), Some(&2000), "settling: {reasons:?}");
        let kept = reasons.get(&(true, "probing")).copied().unwrap_or(0);
        assert!((420..=580).contains(&kept), "kept on {kept} of 2000: {reasons:?}");
        w.blocks.killed = 1;
        decide(&c, &mut w, &headers("u1"), &mut d);
        assert_eq!((d.flags[0].reason, d.probed), (Reason::RolledBack, 0), "killed: not probed");
    }

    #[test]
    fn global_off_sends_everyone_old_with_no_features() {
        let c = checkout(100.0).set("override", "off").compile().unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        decide(&c, &mut w, &headers("u1"), &mut d);
        assert_eq!(d.stack, Stack::Old);
        assert!(d.flags.iter().all(|f| !f.on && f.reason == Reason::GlobalOff));
    }

    #[test]
    fn anonymous_user_stays_on_old_stack_by_default() {
        let c = config(100.0);
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        decide(&c, &mut w, &vec![("x-request-id".to_string(), "r1".to_string())], &mut d);
        assert_eq!((d.stack, d.bucket), (Stack::Old, None));
    }

    #[test]
    fn holdout_is_sticky_and_close_to_its_share() {
        let c = TestConfig::rollout(100.0)
            .feature("a", json!({"override": "on", "holdout": 20}))
            .on("b")
            .compile()
            .unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let n = 5000;
        let mut held = 0;
        for i in 0..n {
            let user = format!("h{i}");
            decide(&c, &mut w, &headers(&user), &mut d);
            let first = d.flags[0].reason;
            decide(&c, &mut w, &headers(&user), &mut d);
            assert_eq!(d.flags[0].reason, first, "sticky per user");
            assert_eq!(d.flags[1].reason, Reason::ForcedOn, "no holdout configured for b");
            if first == Reason::Holdout {
                held += 1;
                assert_eq!(d.holdout, 1);
            }
        }
        let share = 100.0 * held as f64 / n as f64;
        assert!((share - 20.0).abs() < 2.0, "holdout share {share}");
    }

    #[test]
    fn predicted_segments_tailor_the_rollout() {
        // Users the model predicts will engage with recommendations go to the new
        // stack; everyone else stays on the old one.
        let c = TestConfig::rollout(0.0)
            .set("rollout.by_segment", json!([{"segment": "engaged", "percentage": 100}]))
            .segment(
                "engaged",
                json!({"predicted": {"feature": "recommendations", "impact": "engagement", "min": 0.6}}),
            )
            .feature("recommendations", json!({"allow_segments": ["engaged"], "min_score": 0}))
            .compile()
            .unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let req = |user: &str, sessions: &str| -> Vec<(String, String)> {
            vec![("x-user-id".into(), user.into()), ("x-user-sessions-30d".into(), sessions.into())]
        };
        decide(&c, &mut w, &req("heavy", "50"), &mut d);
        assert_eq!((d.stack, d.profile.segments), (Stack::New, 1), "heavy user predicted to engage");
        assert!(d.flags[0].on);
        decide(&c, &mut w, &req("light", "1"), &mut d);
        assert_eq!((d.stack, d.profile.segments), (Stack::Old, 0), "light user is not in the segment");
    }
}

//! The block probe (`rollback.probe_share`), through the filter's stream
//! runtime on a simulated clock: a block keeps a small randomised holdout
//! (the feature kept on, reason `probing`) once it is `probe_after_s` old; a
//! harm that ends is lifted, one that stays is not, and a harm that shrinks to
//! a pair inside its block narrows the block to that pair.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use augur::offline::Simulation;
use augur::testing::TestConfig;
use serde_json::Value;

const PROBE_SHARE: f64 = 0.2;
const PROBE_AFTER_S: u64 = 30;

/// Where a request is harmed while search_v2 is on: `tablet` and `static`
/// tell the request's cells, `t_s` the time.
type Harm = fn(t_s: u64, tablet: bool, is_static: bool) -> bool;

#[derive(Debug, Default)]
struct Seen {
    /// (time s, log line) of every rollback event.
    events: Vec<(u64, String)>,
    /// Per request: (time s, tablet, static, reason of search_v2, p_on).
    decisions: Vec<(u64, bool, bool, String, Option<f64>)>,
}

impl Seen {
    fn first(&self, what: &str) -> Option<u64> {
        self.events.iter().find(|(_, e)| e.contains(what)).map(|(t, _)| *t)
    }
    fn reasons(&self, from_s: u64, to_s: u64, keep: impl Fn(bool, bool) -> bool) -> Vec<&str> {
        self.decisions
            .iter()
            .filter(|(t, tablet, st, _, _)| (from_s..to_s).contains(t) && keep(*tablet, *st))
            .map(|(_, _, _, r, _)| r.as_str())
            .collect()
    }
}

/// 100 requests a second for `seconds`: 40% tablets, 30% `/static`; a harmed
/// request fails with `harmed_rate`, any other with 10%.
fn run(harm: Harm, harmed_rate: f64, seconds: u64, seed: u64) -> Seen {
    let config = TestConfig::rollout(80.0)
        .permissive("search_v2")
        .set("rollback.probe_share", PROBE_SHARE)
        .set("rollback.probe_after_s", PROBE_AFTER_S)
        .compile()
        .unwrap();
    let mut sim = Simulation::new(config, seed);
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut seen = Seen::default();
    for i in 0..seconds * 100 {
        let t_ms = i * 10;
        seen.events.extend(sim.advance(t_ms).into_iter().map(|(t, e)| (t / 1000, e)));
        let tablet = next() < 0.4;
        let is_static = next() < 0.3;
        let ua = if tablet { "Mozilla/5.0 (iPad; CPU OS 17_0)" } else { "Mozilla/5.0 (Windows NT 10.0)" };
        let path = if is_static { "/static/app.js" } else { "/api/search?q=x" };
        let user = format!("u{}", (next() * 50_000.0) as u64);
        let headers = [(":method", "GET"), (":path", path), ("user-agent", ua), ("x-user-id", user.as_str())];
        let (seq, host) = sim.request(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let record: Value = serde_json::from_str(host.record.as_deref().unwrap()).unwrap();
        let feature = &record["features"]["search_v2"];
        let on = feature["on"] == true;
        if record["stack"] == "new" {
            let reason = feature["reason"].as_str().unwrap().to_string();
            seen.decisions.push((t_ms / 1000, tablet, is_static, reason, feature["p_on"].as_f64()));
        }
        let rate = if on && harm(t_ms / 1000, tablet, is_static) { harmed_rate } else { 0.1 };
        let status = if next() < rate { "500" } else { "200" };
        sim.respond(seq, vec![(":status".into(), status.into())]).unwrap();
    }
    seen
}

/// The seeds a test runs: `AUGUR_PROBE_SEEDS=1-25` (or `3,7`) for more than
/// its own, as the numbers in README and docs/loop-demo.md were measured.
fn seeds(own: &[u64]) -> Vec<u64> {
    let Ok(spec) = std::env::var("AUGUR_PROBE_SEEDS") else { return own.to_vec() };
    match spec.split_once('-') {
        Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect(),
        None => spec.split(',').map(|s| s.parse().unwrap()).collect(),
    }
}

fn share(reasons: &[&str], reason: &str) -> f64 {
    reasons.iter().filter(|r| **r == reason).count() as f64 / reasons.len().max(1) as f64
}

#[test]
fn a_block_is_probed_only_once_settled_and_a_harm_that_ends_is_lifted() {
    let harm: Harm = |t, tablet, _| tablet && t < 60;
    for seed in seeds(&[7]) {
        ended_harm_is_lifted(run(harm, 0.4, 900, seed));
    }
}

fn ended_harm_is_lifted(seen: Seen) {
    let blocked = seen.first("rolled back in device=tablet").expect("the tablet harm is blocked");
    assert!(blocked < 30, "blocked at {blocked} s: {:?}", seen.events);
    // Settling: for probe_after_s after each block of the feature, no request
    // is probed: a blocked one has the feature off.
    let blocks: Vec<u64> =
        seen.events.iter().filter(|(_, e)| e.contains("rolled back in")).map(|(t, _)| *t).collect();
    for &at in &blocks {
        let settling = seen.reasons(at, at + PROBE_AFTER_S, |tablet, _| tablet);
        assert!(settling.contains(&"rolled_back"), "{:?}", seen.events);
        assert!(
            !settling.contains(&"probing"),
            "probed within {PROBE_AFTER_S} s of the block at {at} s: {:?}",
            seen.events
        );
    }
    // Then the probe: probe_share of the blocked requests, each marked with its design.
    let probe_arms: Vec<&(u64, bool, bool, String, Option<f64>)> = seen
        .decisions
        .iter()
        .filter(|d| ["probing", "rolled_back"].contains(&d.3.as_str()) && d.4.is_some())
        .collect();
    let kept = probe_arms.iter().filter(|d| d.3 == "probing").count() as f64 / probe_arms.len().max(1) as f64;
    assert!(probe_arms.len() > 500, "{} probed requests: {:?}", probe_arms.len(), seen.events);
    assert!(
        (PROBE_SHARE - 0.05..=PROBE_SHARE + 0.05).contains(&kept),
        "kept on {kept:.3} of {}",
        probe_arms.len()
    );
    assert!(probe_arms.iter().all(|d| d.4 == Some(PROBE_SHARE)), "both probe arms carry p_on {PROBE_SHARE}");
    let unprobed = seen.decisions.iter().filter(|d| d.3 == "rolled_back" && d.4.is_none()).count();
    assert!(unprobed > 300, "settling blocks are not randomised: {unprobed}");
    let desktops = seen.reasons(0, 900, |tablet, _| !tablet);
    assert!(desktops.iter().all(|r| ["enabled", "exploring"].contains(r)), "desktops never blocked");

    // The harm ended at 60 s: the probe lifts the blocks, and tablets get the feature back.
    let lifted =
        seen.first("lifted in device=tablet").unwrap_or_else(|| panic!("not lifted: {:?}", seen.events));
    assert!(lifted > 60, "lifted at {lifted} s, while the harm lasted");
    let last_lift =
        seen.events.iter().filter(|(_, e)| e.contains("lifted in")).map(|(t, _)| *t).max().unwrap();
    let after = seen.reasons(last_lift + 2, 900, |tablet, _| tablet);
    assert!(after.len() > 300 && share(&after, "enabled") > 0.99, "{:?}", seen.events);
    println!("blocked at {blocked} s, lifted from {lifted} s (harm ended at 60 s)");
}

#[test]
fn a_harm_that_stays_is_never_lifted() {
    let harm: Harm = |_, tablet, _| tablet;
    for seed in seeds(&[1, 2, 3, 4, 5, 6, 7, 11]) {
        let seen = run(harm, 0.4, 600, seed);
        assert!(seen.first("rolled back in device=tablet").is_some(), "{:?}", seen.events);
        assert_eq!(seen.first("lifted"), None, "seed {seed}: {:?}", seen.events);
        let late = seen.reasons(300, 600, |tablet, _| tablet);
        let kept = share(&late, "probing");
        assert!((PROBE_SHARE - 0.04..=PROBE_SHARE + 0.04).contains(&kept), "seed {seed}: kept on {kept:.3}");
    }
}

#[test]
fn a_harm_that_shrinks_to_a_pair_narrows_its_block_to_that_pair() {
    // Every tablet at first; from 60 s only tablets on /static.
    let harm: Harm = |t, tablet, is_static| tablet && (t < 60 || is_static);
    for seed in seeds(&[7]) {
        shrunk_harm_is_narrowed(run(harm, 0.4, 900, seed));
    }
}

fn shrunk_harm_is_narrowed(seen: Seen) {
    let blocked = seen.first("rolled back in device=tablet").expect("blocked");
    let narrowed = seen.first("lifted in device=tablet&").unwrap_or_else(|| panic!("{:?}", seen.events));
    assert!(narrowed > 60 && blocked < narrowed, "{:?}", seen.events);
    assert_eq!(seen.first("lifted in device=tablet:"), None, "the whole block is never lifted");
    let search = seen.reasons(narrowed + 2, 900, |tablet, st| tablet && !st);
    assert!(share(&search, "enabled") > 0.99, "tablets off /static get the feature back");
    let still = seen.reasons(narrowed + 2, 900, |tablet, st| tablet && st);
    assert!(still.len() > 100 && share(&still, "enabled") == 0.0, "tablets on /static stay blocked (probed)");
    println!("blocked at {blocked} s, narrowed at {narrowed} s (harm shrank at 60 s)");
}

#[test]
fn a_feature_blocked_again_after_a_lift_is_not_probed_again() {
    // A harm that ends and comes back (or one too small for the lift test to
    // tell from none: it rules out 2×): blocked, lifted once, blocked again —
    // then the block stays unprobed for the epoch, so it cannot flap.
    let harm: Harm = |t, tablet, _| tablet && !(60..600).contains(&t);
    for seed in seeds(&[7]) {
        let seen = run(harm, 0.4, 1500, seed);
        let lifted = seen.first("lifted in").unwrap_or_else(|| panic!("seed {seed}: {:?}", seen.events));
        let again =
            seen.events.iter().find(|(t, e)| *t > lifted && e.contains("rolled back in")).map(|(t, _)| *t);
        let again = again.unwrap_or_else(|| panic!("seed {seed}: not blocked again: {:?}", seen.events));
        assert!(again > 600, "seed {seed}: {:?}", seen.events);
        let after = seen.reasons(again + 2, 1500, |tablet, _| tablet);
        assert!(after.len() > 2000 && !after.contains(&"probing"), "seed {seed}: probed after the relapse");
        assert_eq!(seen.events.iter().filter(|(t, e)| *t > again && e.contains("lifted")).count(), 0);
        println!("seed {seed}: blocked, lifted at {lifted} s, blocked again at {again} s, not probed since");
    }
}

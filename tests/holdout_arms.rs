//! The filter's sequential tests count only request-level randomisation
//! (exploration draws), never a feature's A/B holdout: a holdout is drawn once
//! per *user*, so every request of a user lands in one arm, and a few users
//! who fail on their own (a broken client, a bot) make a feature that does
//! nothing look harmful. Through the stream runtime on a simulated clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use augur::offline::Simulation;
use augur::testing::TestConfig;
use serde_json::Value;

fn rng(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn headers(user: &str) -> Vec<(String, String)> {
    [
        (":method", "GET"),
        (":path", "/api/search"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0)"),
        ("x-user-id", user),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// search_v2 has no effect at all; eight users fail 60% of their requests
/// whatever they get — four on the new stack outside search_v2's 50% holdout,
/// four on the old stack (so the stacks do not differ) — everyone else 5%.
/// Five minutes at 50 requests a second: no block, no kill, no revert.
#[test]
fn users_who_fail_on_their_own_do_not_block_a_feature_through_its_holdout() {
    let config = || {
        TestConfig::rollout(80.0)
            .feature(
                "search_v2",
                serde_json::json!({"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1,
                                   "max_security_risk": 1, "holdout": 50}),
            )
            .set("rollback.sync_ms", 1000)
            .compile()
            .unwrap()
    };
    // Who is where: one request per candidate user, read from the record.
    let mut probe = Simulation::new(config(), 1);
    let (mut bad_new, mut bad_old, mut others) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..400 {
        let user = format!("user-{i}");
        let (seq, host) = probe.request(headers(&user));
        let record: Value = serde_json::from_str(host.record.as_deref().unwrap()).unwrap();
        let (new, on) = (record["stack"] == "new", record["features"]["search_v2"]["on"] == true);
        probe.respond(seq, vec![(":status".into(), "200".into())]).unwrap();
        if new && on && bad_new.len() < 4 {
            bad_new.push(user);
        } else if !new && bad_old.len() < 4 {
            bad_old.push(user);
        } else if others.len() < 72 {
            others.push(user);
        }
    }
    assert_eq!((bad_new.len(), bad_old.len()), (4, 4));
    let bad: Vec<String> = bad_new.into_iter().chain(bad_old).collect();

    let mut sim = Simulation::new(config(), 7);
    let mut next = rng(7);
    let mut events = Vec::new();
    let users: Vec<(&str, f64)> =
        bad.iter().map(|u| (u.as_str(), 0.6)).chain(others.iter().map(|u| (u.as_str(), 0.05))).collect();
    for i in 0..300 * 50 {
        events.extend(sim.advance(i * 20));
        let (user, rate) = users[(next() * users.len() as f64) as usize % users.len()];
        let (seq, _) = sim.request(headers(user));
        let status = if next() < rate { "500" } else { "200" };
        sim.respond(seq, vec![(":status".into(), status.into())]).unwrap();
    }
    // The rollback log's words for a block, a kill and a revert.
    let actions: Vec<_> =
        events.iter().filter(|(_, e)| e.contains("rolled back") || e.contains("reverts")).collect();
    assert!(actions.is_empty(), "a feature with no effect was acted on: {actions:?}");
}

//! The holes of issue 13, each pinned by a test that failed before its fix:
//! what a hostile client or a careless operator could do at the edges.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use augur::config::compile;
use augur::engine::{decide, Decision, Worker};
use augur::headers::{HeaderMap, Headers};
use augur::profile::{encode, Profile};
use augur::routing::Stack;
use augur::stream::Runtime;
use augur::testing::TestConfig;

#[path = "support/raw_host.rs"]
mod raw_host;
use raw_host::{NullSink, RawHost};

/// Everyone with a user id on the new stack, with one feature forced on.
fn all_new() -> Runtime {
    Runtime::new(TestConfig::rollout(100.0).on("a").compile().expect("valid"), &mut NullSink)
}

#[test]
fn underscore_look_alikes_of_control_headers_are_stripped() {
    // Frameworks that fold '_' into '-' (CGI, Django, Rails, nginx with
    // underscores_in_headers) would read these as control headers.
    let mut rt = all_new();
    let mut host = RawHost::with(&[
        ("x-user-id", "u1"),
        ("x_augur_stack", "new"),
        ("x_augur_features", "admin"),
        ("x-augur_decision", "forged"),
        ("x_augur-anything", "1"),
        ("x_user_id", "kept"),
    ]);
    rt.on_request_headers(&mut host, &mut NullSink);
    for name in ["x_augur_stack", "x_augur_features", "x-augur_decision", "x_augur-anything"] {
        assert_eq!(host.header(name), None, "{name} reached the app");
    }
    assert_eq!(host.header("x_user_id"), Some("kept"), "only control look-alikes are stripped");
    assert_eq!(host.header("x-augur-features"), Some("a"));
}

#[test]
fn the_decision_id_is_not_the_clients_request_id() {
    let mut rt = all_new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..100 {
        let mut host = RawHost::with(&[("x-user-id", "u1"), ("x-request-id", "chosen-by-client")]);
        rt.on_request_headers(&mut host, &mut NullSink);
        let rec = host.record();
        let id = rec["id"].as_str().expect("id").to_string();
        assert_ne!(id, "chosen-by-client");
        assert_eq!(host.header("x-augur-decision"), Some(id.as_str()), "the header carries augur's id");
        assert_eq!(rec["request_id"], "chosen-by-client", "the client's id is kept for correlation only");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 100, "one fresh id per request");
}

#[test]
fn a_client_cannot_pick_its_per_request_draw_with_x_request_id() {
    // Anonymous requests under `per_request` are split per request: a client
    // replaying one x-request-id must still land on both stacks.
    let c =
        TestConfig::rollout(50.0).set("rollout.when_absent", "per_request").on("a").compile().expect("valid");
    let mut w = Worker::new(&c);
    let mut d = Decision::default();
    let req = vec![("x-request-id".to_string(), "always-the-same".to_string())];
    let new = (0..400)
        .filter(|_| {
            decide(&c, &mut w, &req, &mut d);
            d.stack == Stack::New
        })
        .count();
    assert!((120..=280).contains(&new), "{new} of 400 on the new stack with one replayed x-request-id");
}

#[test]
fn a_user_id_that_is_not_utf8_is_hashed_as_bytes_not_anonymous() {
    let c = TestConfig::rollout(100.0).on("a").compile().expect("valid");
    let mut m = HeaderMap::default();
    m.load(HeaderMap::serialize([("x-user-id", &b"caf\xe9"[..])])).expect("well formed");
    let mut p = Profile::default();
    encode(&c.profile, &m, &mut p);
    assert_eq!(p.vector[1], 1.0, "user_present");
    assert!(p.vector[0] > 0.0, "user_bucket from the bytes");
    let mut other = HeaderMap::default();
    other.load(HeaderMap::serialize([("x-user-id", &b"caf\xe8"[..])])).expect("well formed");
    let mut q = Profile::default();
    encode(&c.profile, &other, &mut q);
    assert_ne!(p.vector[0], q.vector[0], "different bytes, different users");

    // And routed as that user (sticky), not as an anonymous request (old stack).
    let mut w = Worker::new(&c);
    let mut d = Decision::default();
    decide(&c, &mut w, &m, &mut d);
    assert_eq!(d.stack, Stack::New);
    assert!(d.bucket.is_some());
}

#[test]
fn history_values_out_of_f32_range_clamp_like_large_ones() {
    let c = TestConfig::rollout(0.0).on("a").compile().expect("valid");
    let at = |v: &str| {
        let req = vec![("x-user-sessions-30d".to_string(), v.to_string())];
        let mut p = Profile::default();
        encode(&c.profile, &req, &mut p);
        p.vector[16]
    };
    assert_eq!(at("1e38"), 1.0);
    assert_eq!(at("1e39"), 1.0, "beyond f32 must not wrap to 0");
    assert_eq!(at("1e400"), 1.0, "beyond f64 too");
    assert_eq!(at("inf"), 1.0);
    assert_eq!(at("-1e39"), 0.0);
    assert_eq!(at("NaN"), 0.0);
}

#[test]
fn a_truncated_configuration_names_the_position_not_a_field() {
    let good = br#"{"rollout": {"percentage": 5}, "features": [{"name": "a", "override": "on"}]}"#;
    for cut in [good.len() - 1, good.len() - 3, 40, 20] {
        let e = compile(&good[..cut]).expect_err("truncated").to_string();
        assert!(e.starts_with("invalid JSON at line 1 column "), "cut {cut}: {e}");
        assert!(!e.contains("features["), "cut {cut}: names a field that is fine: {e}");
    }
    let e = compile(b"{\"rollout\": {\"percentage\": 5},\n \"features\": [}").expect_err("bad").to_string();
    assert!(e.starts_with("invalid JSON at line 2 column "), "{e}");
}

fn segment_with_users(n: usize) -> String {
    let users: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    TestConfig::rollout(100.0)
        .segment("staff", serde_json::json!({"users": users}))
        .feature("a", serde_json::json!({"override": "on", "allow_segments": ["staff"]}))
        .json()
}

#[test]
fn configuration_size_and_user_lists_are_limited_and_refusals_name_the_limit() {
    let limit = augur::segments::MAX_USERS_PER_SEGMENT;
    assert!(compile(segment_with_users(limit).as_bytes()).is_ok());
    let e = compile(segment_with_users(limit + 1).as_bytes()).expect_err("too many").to_string();
    assert!(e.starts_with(&format!("segments[0].users: {} user ids, at most {limit}", limit + 1)), "{e}");

    let mut big = segment_with_users(10).into_bytes();
    big.truncate(big.len() - 1);
    big.extend(std::iter::repeat_n(b' ', augur::config::MAX_CONFIG_BYTES));
    big.push(b'}');
    let e = compile(&big).expect_err("too big").to_string();
    assert!(e.contains(&format!("at most {} bytes", augur::config::MAX_CONFIG_BYTES)), "{e}");
}

#[test]
fn segment_user_lookups_do_not_scan_the_list() {
    // O(1) membership: the lookup is a hash set, so a full list decides the
    // same as a short one (correctness here; cost is in `make bench`).
    let c = compile(segment_with_users(augur::segments::MAX_USERS_PER_SEGMENT).as_bytes()).expect("valid");
    let mut w = Worker::new(&c);
    let mut d = Decision::default();
    for (user, member) in [("user-0", true), ("user-9999", true), ("user-10000", false), ("nobody", false)] {
        let req = vec![("x-user-id".to_string(), user.to_string())];
        decide(&c, &mut w, &req, &mut d);
        assert_eq!(d.flags[0].on, member, "{user}");
    }
}

#[test]
fn headers_trait_reads_raw_bytes() {
    let mut m = HeaderMap::default();
    m.load(HeaderMap::serialize([("x-a", &b"\xff\x00ok"[..])])).expect("well formed");
    assert_eq!(m.header("x-a"), None);
    assert_eq!(m.header_bytes("x-a"), Some(&b"\xff\x00ok"[..]));
}

//! Property tests (proptest) through the same entry points the filter uses:
//! the plugin configuration, the proxy's raw header-map buffers, a whole
//! request through the runtime, the decision record, and model bytes.
//! 0 panics on any input; round trips are exact. Case counts are fixed per
//! property (bounded time in `make test`); `PROPTEST_CASES` overrides them.
//! The rollback shared-data codec has its own file (`prop_rollback_codec.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use augur::config::{compile, MAX_CONFIG_BYTES};
use augur::engine::{decide, Decision, Worker};
use augur::headers::{HeaderMap, Headers};
use augur::model::Model;
use augur::stream::Runtime;
use proptest::prelude::*;

const DEMO: &str = include_str!("../envoy/augur-demo.json");
const DEFAULT_MODEL: &[u8] = include_bytes!("../models/default.onnx");

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// Arbitrary JSON, biased towards the configuration's own field names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let keys = prop::sample::select(vec![
        "name",
        "revision",
        "rollout",
        "percentage",
        "salt",
        "when_absent",
        "by_segment",
        "segment",
        "features",
        "override",
        "requires",
        "holdout",
        "segments",
        "users",
        "header",
        "values",
        "devices",
        "locations",
        "predicted",
        "feature",
        "impact",
        "min",
        "max",
        "profile",
        "user_header",
        "history",
        "model",
        "onnx_base64",
        "engine",
        "rollback",
        "stats",
        "flush_ms",
        "control_header_prefix",
        "previous_control_header_prefixes",
        "upstream_headers",
        "flags",
        "stacks",
        "old",
        "new",
        "min_score",
        "allow_segments",
        "deny_segments",
        "fallback",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
        prop::sample::select(vec![
            "on",
            "off",
            "auto",
            "a",
            "x-augur-",
            "x-ctl-",
            "",
            "per_request",
            "bot",
            "score"
        ])
        .prop_map(|s| serde_json::json!(s)),
        "[ -~]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| serde_json::Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn config_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = compile(&bytes);
    }

    #[test]
    fn config_json_never_panics(v in json_value()) {
        let _ = compile(v.to_string().as_bytes());
    }

    #[test]
    fn a_mutated_demo_config_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = DEMO.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep.max(bytes.len() / 2));
        if let Err(e) = compile(&bytes) {
            // Every refusal has a message an operator can act on.
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn header_map_buffers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut m = HeaderMap::default();
        let ok = m.load(bytes).is_ok();
        prop_assert!(ok || m.is_empty());
        for (name, value) in m.iter() {
            prop_assert!(m.header(name).is_some() == value.is_some() || m.header_bytes(name).is_some());
        }
        let _ = m.header("x-user-id");
        m.retain_names(|n| !n.starts_with("x-"));
    }

    #[test]
    fn header_maps_round_trip(pairs in prop::collection::vec(("[a-z:_-]{0,12}", prop::collection::vec(any::<u8>(), 0..24)), 0..12)) {
        let buf = HeaderMap::serialize(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let mut m = HeaderMap::default();
        prop_assert!(m.load(buf).is_ok());
        prop_assert_eq!(m.len(), pairs.len());
        for ((name, value), (k, v)) in m.iter().zip(&pairs) {
            prop_assert_eq!(name, k.as_str());
            prop_assert_eq!(value, std::str::from_utf8(v).ok());
        }
        for (k, _) in &pairs {
            let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_slice());
            prop_assert_eq!(m.header_bytes(k), first);
        }
    }

    #[test]
    fn a_truncated_or_corrupted_header_buffer_is_refused_or_read_in_bounds(
        pairs in prop::collection::vec(("[a-z-]{1,8}", "[ -~]{0,8}"), 1..6),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let mut buf = HeaderMap::serialize(pairs.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        let i = flip.0.index(buf.len());
        buf[i] ^= flip.1;
        buf.truncate(cut.index(buf.len() + 1));
        let mut m = HeaderMap::default();
        let _ = m.load(buf);
        for (name, _) in m.iter() {
            let _ = m.header_bytes(name);
        }
    }
}

#[path = "support/raw_host.rs"]
mod raw_host;
use raw_host::{NullSink, RawHost};

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "x-user-id",
            "user-agent",
            "x-geo-region",
            ":method",
            ":path",
            "content-length",
            "x-request-id",
            "x-user-sessions-30d",
            "x-user-purchases-90d",
            "x-user-tenure-days",
            "x-user-errors-7d",
            "x-user-tier",
            "x-augur-stack",
            "x-augur-features",
            "x-augur-decision",
            "x_augur_stack",
            "x-augur_features",
            "x_augur-x",
            "x-augur-",
            "x_augur_",
        ])
        .prop_map(str::to_string),
        "[a-z_:-]{0,16}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "new",
            "old",
            "1e39",
            "-1e39",
            "NaN",
            "inf",
            "1e400",
            "50",
            "0",
            "POST",
            "/api/checkout",
            "Googlebot",
            "Mozilla/5.0 (iPad)",
            "eu",
            "",
            " ",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_request_is_decided_with_every_control_header_replaced(
        headers in prop::collection::vec((header_name(), header_value()), 0..16),
        status in prop::sample::select(vec!["200", "503", "abc", "", "99999999999"]),
    ) {
        thread_local! {
            static RT: std::cell::RefCell<Runtime> = std::cell::RefCell::new(
                Runtime::new(compile(DEMO.as_bytes()).expect("the demo config"), &mut NullSink));
        }
        RT.with(|rt| {
            let mut rt = rt.borrow_mut();
            let mut host = RawHost { headers, ..RawHost::default() };
            let st = rt.on_request_headers(&mut host, &mut NullSink);
            let control: Vec<&str> = host
                .headers
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| k.replace('_', "-").starts_with("x-augur-"))
                .collect();
            let stack = host.headers.iter().filter(|(k, _)| k == "x-augur-stack").count();
            let record: serde_json::Value =
                serde_json::from_str(host.record.as_deref().unwrap_or("")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(stack, 1, "exactly one stack header: {:?}", control);
            prop_assert!(control.iter().all(|k| ["x-augur-stack", "x-augur-features", "x-augur-decision", "x-augur-flags"].contains(k)), "{:?}", control);
            prop_assert_eq!(record["x"].as_array().map(Vec::len), Some(20));
            host.response = vec![(":status".into(), status.as_bytes().to_vec()), ("x-augur-x".into(), b"1".to_vec()), ("x_augur_y".into(), b"1".to_vec())];
            rt.on_response_headers(&st, &mut host, &mut NullSink);
            prop_assert!(host.response.iter().all(|(k, _)| !k.replace('_', "-").starts_with("x-augur-")));
            Ok(())
        })?;
    }

    #[test]
    fn records_round_trip_through_serde_json(
        headers in prop::collection::vec((header_name(), header_value()), 0..12),
        request_id in prop::option::of(any::<String>()),
    ) {
        thread_local! {
            static CFG: augur::config::Config = compile(DEMO.as_bytes()).expect("the demo config");
        }
        CFG.with(|c| {
            let mut m = HeaderMap::default();
            let _ = m.load(HeaderMap::serialize(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))));
            let mut w = Worker::with_seed(c, 7);
            let mut d = Decision::default();
            decide(c, &mut w, &m, &mut d);
            let mut s = String::new();
            augur::record::write(c, &d, request_id.as_deref(), &mut s);
            let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| TestCaseError::fail(format!("{e}: {s}")))?;
            prop_assert_eq!(v["request_id"].as_str(), request_id.as_deref());
            prop_assert_eq!(v["stack"].as_str(), Some(d.stack.as_str()));
            prop_assert_eq!(v["bucket"].as_u64(), d.bucket.map(u64::from));
            let features = v["features"].as_object().map(|f| f.len());
            prop_assert_eq!(features, Some(c.rules.features.len()));
            for (i, x) in d.profile.vector.iter().enumerate() {
                let got = v["x"][i].as_f64().unwrap_or(f64::NAN);
                prop_assert!((got - f64::from(*x)).abs() <= 5e-5, "x[{}] {} vs {}", i, got, x);
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn model_bytes_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = DEFAULT_MODEL.to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(bytes.len() * 3 / 4));
        if let Ok(m) = Model::from_onnx(&bytes) {
            if let Ok(mut s) = m.session() {
                let mut out = Vec::new();
                let _ = s.predict(&[0.5; augur::profile::INPUT_DIM], &mut out);
            }
        }
    }

    #[test]
    fn random_model_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Model::from_onnx(&bytes);
    }
}

#[test]
fn the_size_limit_is_checked_before_parsing() {
    let big = vec![b' '; MAX_CONFIG_BYTES + 1];
    let e = compile(&big).expect_err("too big").to_string();
    assert!(e.contains("at most"), "{e}");
}

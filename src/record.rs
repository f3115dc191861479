//! Record: the per-request decision record, one JSON object.
//!
//! The filter stores it in Envoy filter state (`wasm.augur_decision`) so the access
//! log prints it next to the response code and duration — the raw material for
//! dashboards, the A/B report and the retraining job. Written by hand into a
//! reused buffer: no allocation per request once the buffer has grown.
//!
//! ```json
//! {"v":1,"rollout":"default","id":"<augur's decision id>","request_id":"<x-request-id>",
//!  "stack":"new","route":"new","bucket":123456,
//!  "model":"default-v1","model_ok":true,"device":"mobile","segments":["beta"],
//!  "features":{"new_checkout":{"on":true,"reason":"enabled","score":72,"randomised":true,"p_on":0.5}},
//!  "cells":[1,7,14,15,17,19,21,23],"x":[0.41,1,1,0,...]}
//! ```
//! `id` is augur's own (16 hex digits, see `Decision::id`): the client cannot
//! choose it. `request_id` is the request's `x-request-id` as it reached the
//! filter (`null` without one), for correlation only.
//! `x` is the model input vector (see `augur schema`), 4 decimals; `score` is
//! absent when the model did not score the feature on this request;
//! `randomised` marks features whose on/off state was random (A/B holdout,
//! exploration, or a block's probe) — the requests an unbiased on/off comparison may use, in the arm
//! `on` says, `p_on` the chance by design that it was on (`Decision::p_on`:
//! designs differ across requests, so pooled analyses weigh by it); `cells`
//! are the request's rollback cells, one per attribute group (names: `augur
//! schema`, `cells`). Offline tools read these instead of re-deriving them.

use std::fmt::Write as _;

use crate::config::Config;
use crate::engine::Decision;
use crate::routing::Stack;

/// Record format version; bump on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // The common case (request ids, names): nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes the `<prefix>flags` request header value into `out` (cleared first):
/// what an app needs to resolve a flag with its reason (the OpenFeature
/// providers in `clients/` read it). Comma-separated entries, the model first:
///
/// ```text
/// @model=default-v1,new_checkout=on;enabled;72,search_v2=off;security_risk;41,hd_images=on;forced_on
/// ```
///
/// `@model=<version>;error` when the model failed on this request (fallbacks
/// applied); a feature's third field, its score (0-100), is absent when the
/// model did not score it. Feature names and versions are tokens (letters,
/// digits, `-`, `_`, `.`), so the value needs no escaping.
pub fn write_flags(config: &Config, decision: &Decision, out: &mut String) {
    out.clear();
    out.push_str("@model=");
    out.push_str(&config.model_version);
    if !decision.model_ok {
        out.push_str(";error");
    }
    for (name, flag) in config.feature_names().zip(&decision.flags) {
        out.push(',');
        out.push_str(name);
        out.push_str(if flag.on { "=on;" } else { "=off;" });
        out.push_str(flag.reason.as_str());
        if let Some(score) = flag.score {
            out.push(';');
            push_u64(out, u64::from(score));
        }
    }
}

/// Writes the decision record for one request into `out` (cleared first).
pub fn write(config: &Config, decision: &Decision, request_id: Option<&str>, out: &mut String) {
    out.clear();
    // push_str and push_u64 rather than `write!`: core::fmt is slow in wasm.
    out.push_str("{\"v\":");
    push_u64(out, u64::from(RECORD_VERSION));
    out.push_str(",\"rollout\":\"");
    out.push_str(&config.name);
    out.push_str("\",\"id\":\"");
    decision.write_id(out);
    out.push_str("\",\"request_id\":");
    match request_id {
        Some(id) => push_json_str(out, id),
        None => out.push_str("null"),
    }
    out.push_str(",\"stack\":\"");
    out.push_str(decision.stack.as_str());
    out.push_str("\",\"route\":\"");
    out.push_str(match decision.stack {
        Stack::Old => &config.old_stack,
        Stack::New => &config.new_stack,
    });
    out.push_str("\",\"bucket\":");
    match decision.bucket {
        Some(b) => push_u64(out, u64::from(b)),
        None => out.push_str("null"),
    }
    if decision.reverted {
        out.push_str(",\"reverted\":true");
    }
    out.push_str(",\"model\":");
    push_json_str(out, &config.model_version);
    out.push_str(if decision.model_ok { ",\"model_ok\":true" } else { ",\"model_ok\":false" });
    out.push_str(",\"device\":\"");
    out.push_str(decision.profile.device.as_str());
    out.push('"');
    out.push_str(",\"segments\":[");
    let mut first = true;
    for (i, seg) in config.segments.iter().enumerate() {
        if decision.profile.segments & (1 << i) != 0 {
            if !first {
                out.push(',');
            }
            first = false;
            push_json_str(out, &seg.name);
        }
    }
    out.push_str("],\"features\":{");
    for (i, (name, flag)) in config.feature_names().zip(&decision.flags).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str(if flag.on {
            "\":{\"on\":true,\"reason\":\""
        } else {
            "\":{\"on\":false,\"reason\":\""
        });
        out.push_str(flag.reason.as_str());
        out.push('"');
        if let Some(score) = flag.score {
            out.push_str(",\"score\":");
            push_u64(out, u64::from(score));
        }
        if let Some(p) = decision.p_on(config, i) {
            // The on/off state was random: this request is in the feature's
            // on/off comparison, in the arm `on` says, with this chance of `on`.
            out.push_str(",\"randomised\":true,\"p_on\":");
            push_unit(out, p as f32);
        }
        out.push('}');
    }
    out.push_str("},\"cells\":[");
    for (i, c) in decision.cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_u64(out, u64::from(*c));
    }
    out.push_str("],\"x\":[");
    for (i, x) in decision.profile.vector.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_unit(out, *x);
    }
    out.push_str("]}");
}

/// Appends `n` in decimal (`itoa`: two digits per step, no UTF-8 check).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Writes a value of the input vector (all in [0, 1]) with 4 decimals, without
/// float formatting: ~6× faster than `{}` and enough for training (1e-4).
fn push_unit(out: &mut String, x: f32) {
    // Most inputs are one-hot: no rounding for them.
    if x == 0.0 {
        out.push('0');
        return;
    }
    if x == 1.0 {
        out.push('1');
        return;
    }
    if !(0.0..=1.0).contains(&x) {
        let _ = write!(out, "{x}");
        return;
    }
    // In f64: the product is exact there, so a value just under a half-step
    // (0.68604999…) rounds down; f32's product rounds it to 6860.5 first.
    let n = (f64::from(x) * 10_000.0).round() as u32;
    match n {
        0 => out.push('0'),
        10_000 => out.push('1'),
        _ => {
            let mut digits = [b'0'; 4];
            let mut rest = n;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let len = digits.iter().rposition(|&d| d != b'0').map_or(0, |p| p + 1);
            out.push_str("0.");
            out.push_str(std::str::from_utf8(&digits[..len]).unwrap_or("0"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decide, Worker};
    use crate::profile::INPUT_DIM;
    use crate::testing::TestConfig;

    #[test]
    fn flags_header_lists_every_feature_with_state_reason_and_score() {
        let c = TestConfig::rollout(100.0).on("a").off("b").permissive("search_v2").compile().unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let req: Vec<(String, String)> = vec![("x-user-id".into(), "u1".into())];
        decide(&c, &mut w, &req, &mut d);
        let mut s = String::new();
        write_flags(&c, &d, &mut s);
        let entries: Vec<&str> = s.split(',').collect();
        assert_eq!(entries[0], "@model=default-v1");
        assert_eq!(entries[1], "a=on;forced_on");
        assert_eq!(entries[2], "b=off;kill_switch");
        let (name, rest) = entries[3].split_once('=').unwrap();
        let fields: Vec<&str> = rest.split(';').collect();
        assert_eq!(name, "search_v2");
        assert_eq!(fields[0], if d.flags[2].on { "on" } else { "off" });
        assert_eq!(fields[1], d.flags[2].reason.as_str());
        assert_eq!(fields[2].parse::<u8>().ok(), d.flags[2].score, "the model scores search_v2");
        assert_eq!(entries.len(), 4);
        d.model_ok = false;
        write_flags(&c, &d, &mut s);
        assert!(s.starts_with("@model=default-v1;error,a=on;forced_on,"), "{s}");
    }

    #[test]
    fn record_is_valid_json_with_every_field() {
        let c = TestConfig::rollout(100.0)
            .segment("beta", serde_json::json!({"header": "x-tier", "values": ["beta"]}))
            .on("a")
            .off("b")
            .compile()
            .unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let req: Vec<(String, String)> =
            vec![("x-user-id".into(), "u1".into()), ("x-tier".into(), "beta".into())];
        decide(&c, &mut w, &req, &mut d);
        let mut s = String::new();
        write(&c, &d, Some("id-with-\"quote\"\n"), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["rollout"], "default");
        assert_eq!(v["request_id"], "id-with-\"quote\"\n");
        assert_eq!(v["id"].as_str().map(str::len), Some(16));
        assert_eq!(v["stack"], "new");
        assert_eq!(v["route"], "new");
        assert!(v["bucket"].is_u64());
        assert_eq!(v["segments"], serde_json::json!(["beta"]));
        assert_eq!(v["features"]["a"]["on"], true);
        assert_eq!(v["features"]["a"]["reason"], "forced_on");
        assert_eq!(v["features"]["b"]["reason"], "kill_switch");
        assert_eq!(v["x"].as_array().unwrap().len(), INPUT_DIM);
        assert_eq!(v["cells"], serde_json::json!(d.cells), "the rollback cells");
        assert!(v["features"]["a"].get("randomised").is_none(), "override on: never randomised");
    }

    #[test]
    fn randomised_features_are_marked_with_their_arm() {
        let c = TestConfig::rollout(100.0)
            .feature("a", serde_json::json!({"override": "on", "holdout": 50}))
            .on("b")
            .compile()
            .unwrap();
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let mut arms = std::collections::HashSet::new();
        for u in 0..40 {
            let req: Vec<(String, String)> = vec![("x-user-id".into(), format!("u{u}"))];
            decide(&c, &mut w, &req, &mut d);
            let mut s = String::new();
            write(&c, &d, Some("r"), &mut s);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["features"]["a"]["randomised"], true, "holdout users and the rest alike");
            assert_eq!(v["features"]["a"]["p_on"], 0.5, "holdout 50%");
            assert!(v["features"]["b"].get("randomised").is_none());
            arms.insert(v["features"]["a"]["on"].as_bool().unwrap());
        }
        assert_eq!(arms.len(), 2, "both arms seen");
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 999_999, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\u{1}b\\");
        assert_eq!(s, r#""a\u0001b\\""#);
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "a\u{1}b\\");
    }

    /// Rounded as the value is: f32's 0.00005 is 4.99999987e-5 and its 0.68605
    /// is 0.686049997…, both under the half-step.
    #[test]
    fn vector_values_are_written_with_four_decimals() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (0.5, "0.5"),
            (0.12344, "0.1234"),
            (0.00006, "0.0001"),
            (0.00005, "0"),
            (0.99999, "1"),
            (0.68605, "0.686"),
        ];
        for (x, want) in cases {
            let mut s = String::new();
            push_unit(&mut s, x);
            assert_eq!(s, want, "{x}");
        }
        let mut s = String::new();
        push_unit(&mut s, 2.5);
        assert_eq!(s, "2.5", "out-of-range values are written in full");
    }
}

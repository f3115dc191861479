//! The model contract seen from a configuration: a model whose shapes do not
//! match is refused at configure time, and a model that fails on one request
//! fails open (fallbacks, request still decided).

use augur::engine::{decide, Decision, Worker};
use augur::flags::Reason;
use augur::routing::Stack;
use augur::testing::TestConfig;
use base64::Engine as _;
use serde_json::json;

const NAN_MODEL: &[u8] = include_bytes!("fixtures/nan_model.onnx");
const WRONG_SHAPE: &[u8] = include_bytes!("fixtures/wrong_shape.onnx");

fn config_with(model: &[u8]) -> TestConfig {
    let b64 = base64::engine::general_purpose::STANDARD.encode(model);
    TestConfig::rollout(100.0)
        .set("model.onnx_base64", b64)
        .feature("new_checkout", json!({"fallback": "on"}))
        .feature("search_v2", json!({}))
        .feature("one_click_pay", json!({"requires": ["new_checkout"], "fallback": "on"}))
}

fn request(sessions: &str) -> Vec<(String, String)> {
    vec![("x-user-id".into(), "u1".into()), ("x-user-sessions-30d".into(), sessions.into())]
}

#[test]
fn model_with_wrong_output_shape_is_refused() {
    let err = config_with(WRONG_SHAPE).compile().unwrap_err().to_string();
    assert_eq!(
        err,
        "model.onnx_base64: shape: output has shape 1,12 but 5 features × 4 impacts need 20 values"
    );
}

#[test]
fn model_failure_on_one_request_falls_back_and_continues() {
    let c = config_with(NAN_MODEL).compile().unwrap();
    let mut w = Worker::new(&c);
    let mut d = Decision::default();

    // history_0 = 10/50 = 0.2 → sqrt(0.3): finite, scored.
    decide(&c, &mut w, &request("10"), &mut d);
    assert!(d.model_ok);
    assert!(d.flags.iter().all(|f| f.score.is_some()));

    // history_0 = 1.0 → sqrt(-0.5) = NaN: the request is still decided, with fallbacks.
    decide(&c, &mut w, &request("50"), &mut d);
    assert!(!d.model_ok);
    assert_eq!(d.stack, Stack::New);
    let reasons: Vec<Reason> = d.flags.iter().map(|f| f.reason).collect();
    assert_eq!(reasons, [Reason::FallbackOn, Reason::FallbackOff, Reason::FallbackOn]);
    assert!(d.flags.iter().all(|f| f.score.is_none()));

    // And the worker recovers on the next good request.
    decide(&c, &mut w, &request("5"), &mut d);
    assert!(d.model_ok);
}

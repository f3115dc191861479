//! The per-request stages timed inside a wasm VM: `make bench-vm` builds this
//! for wasm32-wasip1 (same profile and SIMD flags as the filter) and runs it under
//! Node's V8 with `--no-liftoff`, as Envoy runs the filter. Natively:
//! `cargo run --release --example vm_bench`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;
use std::time::Instant;

use augur::config::{compile, compile_with_model};
use augur::engine::{decide, Decision, Worker};
use augur::headers::HeaderMap;
use augur::profile::{encode, Profile};

const DEMO: &[u8] = include_bytes!("../envoy/augur-demo.json");

#[path = "../benches/support/request.rs"]
mod request;
use request::request;
#[path = "../benches/support/worker.rs"]
mod worker;

/// Mean time per call over `n` calls after `n / 10` warm-up calls; the best of 5 runs.
fn time(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    println!("{name:28} {best:8.2} us");
}

fn main() {
    let config = compile(DEMO).unwrap();
    let mut tract_json: serde_json::Value = serde_json::from_slice(DEMO).unwrap();
    tract_json["model"]["engine"] = "tract".into();
    let tract = compile(&serde_json::to_vec(&tract_json).unwrap()).unwrap();
    let req = request();
    let pairs: Vec<(&str, &[u8])> = req.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    let serialized = HeaderMap::serialize(pairs.iter().copied());
    let mut headers = HeaderMap::default();
    headers.load(serialized.clone()).unwrap();
    let mut worker = Worker::new(&config);
    let mut d = Decision::default();
    decide(&config, &mut worker, &headers, &mut d);
    let n = 20_000;
    println!("augur hot path inside this VM, demo config, default model, {} headers:", req.len());
    time("headers/load", n, || headers.load(black_box(serialized.clone())).unwrap());
    time("profile/encode", n, || {
        let mut p = Profile::default();
        encode(&config.profile, black_box(&headers), &mut p);
        black_box(p);
    });
    let mut s = config.model.session().unwrap();
    let mut out = Vec::new();
    time("model/predict (dense)", n, || s.predict(black_box(&d.profile.vector), &mut out).unwrap());
    let mut st = tract.model.session().unwrap();
    time("model/predict (tract)", n, || st.predict(black_box(&d.profile.vector), &mut out).unwrap());
    let mut rec = String::new();
    time("record/write", n, || {
        augur::record::write(&config, &d, Some("0b6c5f4e-2f2a-4d8e-9a59-5c1e7d2b8f10"), &mut rec)
    });
    time("decide/whole (dense)", n, || decide(&config, &mut worker, black_box(&headers), &mut d));
    let new = compile(&worker::all_new(DEMO)).unwrap();
    for (name, mut w) in worker::states(&new) {
        let w = &mut w;
        time(&format!("decide/new stack {name}"), n, || decide(&new, w, black_box(&headers), &mut d));
        println!("  (flag reasons of 1,000 such decisions: {})", worker::reasons(&new, w, &headers));
    }
    let mut tw = Worker::new(&tract);
    time("decide/whole (tract)", n, || decide(&tract, &mut tw, black_box(&headers), &mut d));

    println!("per model kind (benches/models, demo config):");
    let kinds: [(&str, &[u8]); 4] = [
        ("gbm 100 trees depth 6", include_bytes!("../benches/models/gbm_t100_d6.onnx")),
        ("gbm 500 trees depth 8", include_bytes!("../benches/models/gbm_t500_d8.onnx")),
        ("linear", include_bytes!("../benches/models/linear.onnx")),
        ("mlp skl2onnx as exported", include_bytes!("../benches/models/mlp_skl.onnx")),
    ];
    for (name, model) in kinds {
        let c = compile_with_model(DEMO, model).unwrap();
        let mut w = Worker::new(&c);
        let mut s = c.model.session().unwrap();
        decide(&c, &mut w, &headers, &mut d);
        time(&format!("predict {name}"), n, || s.predict(black_box(&d.profile.vector), &mut out).unwrap());
        time(&format!("decide {name}"), n, || decide(&c, &mut w, black_box(&headers), &mut d));
    }
}

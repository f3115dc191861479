//! Native hot-path benchmarks: each stage alone and the whole per-request
//! decision with the default model and the demo configuration.
//!
//!     cargo bench --bench decide

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use augur::config::{compile, compile_with_model};
use augur::engine::{decide, Decision, Worker};
use augur::flags::FlagInputs;
use augur::profile::{encode, Profile};
use criterion::{criterion_group, criterion_main, Criterion};

const DEMO: &[u8] = include_bytes!("../envoy/augur-demo.json");

#[path = "support/request.rs"]
mod request;
use request::request;
#[path = "support/worker.rs"]
mod worker;

fn stages(c: &mut Criterion) {
    let config = compile(DEMO).expect("demo config");
    let req = request();
    let mut worker = Worker::new(&config);
    let mut d = Decision::default();
    decide(&config, &mut worker, req.as_slice(), &mut d);

    c.bench_function("profile/encode", |b| {
        let mut p = Profile::default();
        b.iter(|| encode(&config.profile, black_box(req.as_slice()), &mut p))
    });
    c.bench_function("model/predict", |b| {
        let mut s = config.model.session().unwrap();
        let mut out = Vec::new();
        b.iter(|| s.predict(black_box(&d.profile.vector), &mut out).unwrap())
    });
    c.bench_function("model/predict_tract", |b| {
        let tract = compile(&with_tract_engine(DEMO)).unwrap();
        let mut s = tract.model.session().unwrap();
        let mut out = Vec::new();
        b.iter(|| s.predict(black_box(&d.profile.vector), &mut out).unwrap())
    });
    c.bench_function("model/predict_fresh_state", |b| {
        let mut out = Vec::new();
        b.iter(|| config.model.session().unwrap().predict(black_box(&d.profile.vector), &mut out).unwrap())
    });
    c.bench_function("flags/decide", |b| {
        let mut s = config.model.session().unwrap();
        let mut impacts = Vec::new();
        s.predict(&d.profile.vector, &mut impacts).unwrap();
        let mut out = Vec::new();
        let input =
            FlagInputs { impacts: Some(&impacts), segments: d.profile.segments, ..FlagInputs::default() };
        b.iter(|| config.rules.decide(black_box(input), &mut out))
    });
    c.bench_function("routing/choose", |b| b.iter(|| config.rollout.choose(black_box(Some("u00042")), None)));
    c.bench_function("record/write", |b| {
        let mut s = String::new();
        b.iter(|| {
            augur::record::write(&config, black_box(&d), Some("0b6c5f4e-2f2a-4d8e-9a59-5c1e7d2b8f10"), &mut s)
        })
    });
    c.bench_function("decide/whole", |b| {
        b.iter(|| decide(&config, &mut worker, black_box(req.as_slice()), &mut d))
    });
    let new = compile(&worker::all_new(DEMO)).expect("demo config, all new");
    for (name, mut w) in worker::states(&new) {
        let w = &mut w;
        eprintln!(
            "decide/new_stack/{name}: flag reasons of 1,000: {}",
            worker::reasons(&new, w, req.as_slice())
        );
        c.bench_function(&format!("decide/new_stack/{name}"), |b| {
            b.iter(|| decide(&new, w, black_box(req.as_slice()), &mut d))
        });
    }
}

/// `config` with `model.engine: "tract"` (the dense kernel off).
fn with_tract_engine(config: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(config).unwrap();
    v["model"]["engine"] = "tract".into();
    serde_json::to_vec(&v).unwrap()
}

/// A config with features f0..f{n-1}, all scored by the model, all `auto`.
fn scaled_config(n: usize) -> String {
    let features: Vec<String> = (0..n)
        .map(|i| {
            let requires =
                if i > 0 && i % 5 == 0 { format!(r#", "requires": ["f{}"]"#, i - 1) } else { String::new() };
            format!(r#"{{"name": "f{i}", "min_score": 40{requires}}}"#)
        })
        .collect();
    format!(r#"{{"rollout": {{"percentage": 100}}, "features": [{}]}}"#, features.join(","))
}

fn scaling(c: &mut Criterion) {
    let req = request();
    let models: [(usize, usize, &[u8]); 6] = [
        (1, 32, include_bytes!("models/mlp_f1_h32.onnx")),
        (10, 32, include_bytes!("models/mlp_f10_h32.onnx")),
        (50, 32, include_bytes!("models/mlp_f50_h32.onnx")),
        (10, 16, include_bytes!("models/mlp_f10_h16.onnx")),
        (10, 64, include_bytes!("models/mlp_f10_h64.onnx")),
        (10, 256, include_bytes!("models/mlp_f10_h256.onnx")),
    ];
    let mut group = c.benchmark_group("decide/scaling");
    for (features, hidden, model) in models {
        for (engine, json) in [
            ("dense", scaled_config(features).into_bytes()),
            ("tract", with_tract_engine(scaled_config(features).as_bytes())),
        ] {
            let config = compile_with_model(&json, model).expect("scaled config");
            let mut worker = Worker::new(&config);
            let mut d = Decision::default();
            group.bench_function(format!("features={features}/hidden={hidden}/{engine}"), |b| {
                b.iter(|| decide(&config, &mut worker, black_box(req.as_slice()), &mut d))
            });
        }
    }
    group.finish();
}

/// The benchmark model per kind (`integration/fixtures.py`), demo configuration.
pub const KINDS: [(&str, &[u8]); 4] = [
    ("gbm_t100_d6", include_bytes!("models/gbm_t100_d6.onnx")),
    ("gbm_t500_d8", include_bytes!("models/gbm_t500_d8.onnx")),
    ("linear", include_bytes!("models/linear.onnx")),
    ("mlp_skl_as_exported", include_bytes!("models/mlp_skl.onnx")),
];

fn kinds(c: &mut Criterion) {
    let req = request();
    let mut group = c.benchmark_group("decide/kind");
    for (name, model) in KINDS {
        let config = compile_with_model(DEMO, model).expect("demo config with the model");
        let mut worker = Worker::new(&config);
        let mut d = Decision::default();
        decide(&config, &mut worker, req.as_slice(), &mut d);
        group.bench_function(format!("{name}/predict"), |b| {
            let mut s = config.model.session().unwrap();
            let mut out = Vec::new();
            b.iter(|| s.predict(black_box(&d.profile.vector), &mut out).unwrap())
        });
        group.bench_function(format!("{name}/whole"), |b| {
            b.iter(|| decide(&config, &mut worker, black_box(req.as_slice()), &mut d))
        });
    }
    group.finish();
}

criterion_group!(benches, stages, scaling, kinds);
criterion_main!(benches);

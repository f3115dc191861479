//! `augur`: the native companion CLI. It links the same library as the filter, so
//! what it encodes, validates and decides is exactly what Envoy will do.
//!
//! ```text
//! augur schema                          the feature-vector encoding, as JSON
//! augur encode --config C.json          JSONL of header objects on stdin → JSONL vectors
//! augur decide --config C.json          JSONL of header objects on stdin → decision records
//! augur check-config C.json             compile a plugin configuration; exit 1 with the error
//! augur inspect-model M.onnx            the model's metadata, and which kernel runs it and why
//! augur predict M.onnx                  JSONL input vectors on stdin → JSONL raw model outputs
//! ```

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use augur::config::{compile, compile_profile_only, Config};
use augur::engine::{decide, Decision, Worker};
use augur::model::Model;
use augur::profile::{encode, Profile, Vector, INPUT_DIM, SCHEMA_ID, SLOTS};

fn usage() -> ExitCode {
    eprintln!(
        "usage: augur schema | encode --config C.json | decide --config C.json | check-config C.json | inspect-model M.onnx | predict M.onnx"
    );
    ExitCode::from(2)
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

/// One input line: a JSON object of header name → value (names are lowercased).
fn headers_of(line: &str) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad input line: {e}"))?;
    let obj = v.as_object().ok_or("each input line must be a JSON object of headers")?;
    Ok(obj
        .iter()
        .map(|(k, v)| {
            let val = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.to_ascii_lowercase(), val)
        })
        .collect())
}

fn for_each_line(
    mut f: impl FnMut(&[(String, String)], &mut dyn Write) -> Result<(), String>,
) -> Result<(), String> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        f(&headers_of(&line)?, &mut out)?;
    }
    out.flush().map_err(|e| e.to_string())
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(1), arg(2), arg(3)) {
        (Some("schema"), None, _) => {
            let slots: Vec<_> = SLOTS
                .iter()
                .enumerate()
                .map(|(i, s)| serde_json::json!({"index": i, "name": s.name, "doc": s.doc}))
                .collect();
            let v = serde_json::json!({"schema": SCHEMA_ID, "dim": INPUT_DIM, "slots": slots,
                "impacts": ["performance_cost", "error_risk", "engagement", "security_risk"]});
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            Ok(())
        }
        (Some("encode"), Some("--config"), Some(path)) => {
            let (spec, segments) = compile_profile_only(&read(path)?).map_err(|e| e.to_string())?;
            let mut p = Profile::default();
            for_each_line(|h, out| {
                encode(&spec, &segments, h, &mut p);
                let v: Vec<f64> = p.vector.iter().map(|x| f64::from(*x)).collect();
                writeln!(out, "{}", serde_json::to_string(&v).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())
            })
        }
        (Some("decide"), Some("--config"), Some(path)) => {
            let config: Config = compile(&read(path)?).map_err(|e| e.to_string())?;
            let mut worker = Worker::new(&config);
            let mut d = Decision::default();
            let mut rec = String::new();
            let mut n = 0u64;
            for_each_line(|h, out| {
                n += 1;
                decide(&config, &mut worker, h, &mut d);
                let id = augur::headers::Headers::header(h, "x-request-id")
                    .map(str::to_string)
                    .unwrap_or(format!("cli-{n}"));
                augur::record::write(&config, &d, &id, &mut rec);
                writeln!(out, "{rec}").map_err(|e| e.to_string())
            })
        }
        (Some("check-config"), Some(path), None) => {
            let c = compile(&read(path)?).map_err(|e| e.to_string())?;
            println!(
                "ok: {} features, model {}, rollout {}% to \"{}\"",
                c.rules.features.len(),
                c.model_version,
                c.percentage,
                c.new_stack
            );
            Ok(())
        }
        (Some("inspect-model"), Some(path), None) => {
            let m = Model::from_onnx(&read(path)?).map_err(|e| e.to_string())?;
            let v = serde_json::json!({"version": m.version(), "features": m.features(), "input": [1, INPUT_DIM], "schema": SCHEMA_ID, "engine": m.engine()});
            println!("{v}");
            Ok(())
        }
        (Some("predict"), Some(path), None) => {
            let m = Model::from_onnx(&read(path)?).map_err(|e| e.to_string())?;
            let mut s = m.session().map_err(|e| e.to_string())?;
            let mut raw = Vec::new();
            let stdin = io::stdin();
            let mut out = io::BufWriter::new(io::stdout().lock());
            for line in stdin.lock().lines() {
                let line = line.map_err(|e| e.to_string())?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Vec<f32> =
                    serde_json::from_str(&line).map_err(|e| format!("bad input vector: {e}"))?;
                let x: Vector = v.as_slice().try_into().map_err(|_| {
                    format!("input vectors must have {INPUT_DIM} numbers, this one has {}", v.len())
                })?;
                s.predict_raw(&x, &mut raw).map_err(|e| e.to_string())?;
                writeln!(out, "{}", serde_json::to_string(&raw).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        }
        _ => Err(String::new()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => usage(),
        Err(e) => {
            eprintln!("augur: {e}");
            ExitCode::FAILURE
        }
    }
}

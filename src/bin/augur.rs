//! `augur`: the native companion CLI. It links the same library as the filter, so
//! what it encodes, validates and decides is exactly what Envoy will do.
//!
//! ```text
//! augur schema                          the feature-vector encoding, the rollback cells and
//!                                       the decision reasons, as JSON
//! augur encode --config C.json          JSONL of header objects on stdin → JSONL vectors
//! augur decide --config C.json          JSONL of header objects on stdin → decision records
//! augur check-config C.json [--envoy E.yaml]
//!                                       compile a plugin configuration; exit 1 with the error;
//!                                       with --envoy, also check Envoy's route table matches
//!                                       the stack header the configuration writes
//! augur inspect-model M.onnx            the model's metadata, and which kernel runs it and why
//! augur predict M.onnx                  JSONL input vectors on stdin → JSONL raw model outputs
//! augur stat                            JSONL queries of the rollback statistic on stdin → JSONL
//! augur simulate --config C.json [--seed N]
//!                                       JSONL timed requests / responses / pushes on stdin →
//!                                       one JSONL answer per line (flushed): the filter's
//!                                       runtime and rollback on a simulated clock
//! ```
//!
//! `augur stat` answers `{"test": "harm", "bad_on": x, "bad": k, "pi": p}`, the
//! block probe's lift test `{"test": "no_harm", …, "rho": r}` (`rho` defaults to the filter's),
//! `{"test": "ratio", "x": x, "n": n, "p0": p}` with `{"ln_m": …}`, and
//! `{"test": "levels", "alpha": a, "features": f}` with the alarm levels of each
//! family, and `{"test": "defaults"}` with the rollback defaults the levels and
//! actions depend on: the filter's own numbers, for tools that must agree with it.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use augur::config::{compile, compile_profile_only, Config};
use augur::engine::{decide, Decision, Worker};
use augur::model::Model;
use augur::profile::{encode, Profile, Vector, INPUT_DIM, SCHEMA_ID, SLOTS};

fn usage() -> ExitCode {
    eprintln!(
        "usage: augur schema | encode --config C.json | decide --config C.json | check-config C.json [--envoy envoy.yaml] | inspect-model M.onnx | predict M.onnx | stat | simulate --config C.json [--seed N]"
    );
    ExitCode::from(2)
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

/// One input line: a JSON object of header name → value (names are lowercased).
fn headers_of(line: &str) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad input line: {e}"))?;
    augur::offline::header_pairs(&v, "each input line").map_err(|e| e.0)
}

/// Runs `f` on every non-empty stdin line, writing to buffered stdout.
fn each_line(mut f: impl FnMut(&str, &mut dyn Write) -> Result<(), String>) -> Result<(), String> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        f(&line, &mut out)?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// [`each_line`] over JSON objects of headers.
fn for_each_line(
    mut f: impl FnMut(&[(String, String)], &mut dyn Write) -> Result<(), String>,
) -> Result<(), String> {
    each_line(|line, out| f(&headers_of(line)?, out))
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
            let cells: Vec<String> = (0..augur::rollback::CELLS).map(augur::rollback::cell_name).collect();
            let reasons: Vec<&str> = augur::flags::Reason::ALL.iter().map(|r| r.as_str()).collect();
            let v = serde_json::json!({"schema": SCHEMA_ID, "dim": INPUT_DIM, "slots": slots, "cells": cells,
                "impacts": ["performance_cost", "error_risk", "engagement", "security_risk"], "reasons": reasons});
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            Ok(())
        }
        (Some("encode"), Some("--config"), Some(path)) => {
            let spec = compile_profile_only(&read(path)?).map_err(|e| e.to_string())?;
            let mut p = Profile::default();
            for_each_line(|h, out| {
                encode(&spec, h, &mut p);
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
            for_each_line(|h, out| {
                decide(&config, &mut worker, h, &mut d);
                let id = augur::headers::Headers::header(h, "x-request-id");
                augur::record::write(&config, &d, id, &mut rec);
                writeln!(out, "{rec}").map_err(|e| e.to_string())
            })
        }
        (Some("check-config"), Some(path), envoy) => {
            let c = compile(&read(path)?).map_err(|e| e.to_string())?;
            match (envoy, arg(4)) {
                (None, _) => {}
                (Some("--envoy"), Some(envoy_path)) if arg(5).is_none() => {
                    println!("{}", check_envoy(&c, envoy_path)?);
                }
                _ => return Err(String::new()),
            }
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
            each_line(|line, out| {
                let v: Vec<f32> = serde_json::from_str(line).map_err(|e| format!("bad input vector: {e}"))?;
                let x: Vector = v.as_slice().try_into().map_err(|_| {
                    format!("input vectors must have {INPUT_DIM} numbers, this one has {}", v.len())
                })?;
                s.predict_raw(&x, &mut raw).map_err(|e| e.to_string())?;
                writeln!(out, "{}", serde_json::to_string(&raw).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())
            })
        }
        (Some("simulate"), Some("--config"), Some(path)) => {
            let config = compile(&read(path)?).map_err(|e| e.to_string())?;
            let seed = match (arg(4), arg(5)) {
                (None, _) => 0,
                (Some("--seed"), Some(n)) => {
                    n.parse().map_err(|_| format!("--seed: {n} is not a whole number"))?
                }
                _ => return Err(String::new()),
            };
            simulate(augur::offline::Simulation::new(config, seed))
        }
        (Some("stat"), None, _) => each_line(|line, out| {
            let q: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("bad stat query: {e}"))?;
            writeln!(out, "{}", stat(&q)?).map_err(|e| e.to_string())
        }),
        _ => Err(String::new()),
    }
}

/// `augur simulate`: one answer per input line, flushed at once, so a driver
/// can compute each response from the decision it was given (see
/// [`augur::offline::Simulation::apply`]).
fn simulate(mut sim: augur::offline::Simulation) -> Result<(), String> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: not JSON ({e})", n + 1))?;
        let answer = sim.apply(&v).map_err(|e| format!("line {}: {e}", n + 1))?;
        writeln!(out, "{answer}").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One `augur stat` query.
fn stat(q: &serde_json::Value) -> Result<serde_json::Value, String> {
    use augur::rollback::{stats, Levels, Policy};
    let num = |k: &str| {
        q.get(k).and_then(serde_json::Value::as_f64).ok_or(format!("stat query needs a number \"{k}\""))
    };
    let count = |k: &str| {
        q.get(k).and_then(serde_json::Value::as_u64).ok_or(format!("stat query needs a count \"{k}\""))
    };
    match q.get("test").and_then(serde_json::Value::as_str) {
        Some("harm") => {
            Ok(serde_json::json!({"ln_m": stats::ln_harm(count("bad_on")?, count("bad")?, num("pi")?)}))
        }
        Some("no_harm") => {
            let rho = q.get("rho").and_then(serde_json::Value::as_f64).unwrap_or(augur::rollback::PROBE_RHO);
            Ok(
                serde_json::json!({"ln_m": stats::ln_no_harm(count("bad_on")?, count("bad")?, num("pi")?, rho)}),
            )
        }
        Some("ratio") => {
            Ok(serde_json::json!({"ln_m": stats::ln_ratio(count("x")?, count("n")?, num("p0")?)}))
        }
        Some("levels") => {
            let policy = Policy { alpha: num("alpha")?, ..Policy::default() };
            let l = Levels::new(&policy, count("features")? as usize);
            Ok(serde_json::json!({"single": l.single, "pair": l.pair, "kill": l.kill, "revert": l.revert,
                "screen": l.screen, "srm": l.srm}))
        }
        Some("defaults") => {
            let p = Policy::default();
            Ok(serde_json::json!({"alpha": p.alpha, "min_samples": p.min_samples,
                "kill_after_cells": p.kill_after_cells, "explore_share": p.explore_share,
                "probe_share": p.probe_share, "probe_after_s": p.probe_after_s, "probe_rho": augur::rollback::PROBE_RHO}))
        }
        _ => {
            Err("stat query needs \"test\": \"harm\", \"no_harm\", \"ratio\", \"levels\" or \"defaults\""
                .into())
        }
    }
}

/// Every route (an object with a `match`) in an Envoy configuration, with its name.
fn routes<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("match").is_some_and(|x| x.is_object())
                && (m.contains_key("route") || m.contains_key("direct_response"))
            {
                out.push(v);
            }
            m.values().for_each(|x| routes(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| routes(x, out)),
        _ => {}
    }
}

/// Whether any HTTP connection manager sets `headers_with_underscores_action`.
fn underscores_action(v: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(v: &serde_json::Value, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(a) = m.get("headers_with_underscores_action").and_then(|a| a.as_str()) {
                    found.push(a.to_string());
                }
                m.values().for_each(|x| walk(x, found));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, found)),
            _ => {}
        }
    }
    walk(v, &mut found);
    found
}

/// Cross-checks Envoy's route table against the configuration: some route
/// must send `<prefix>stack: <stacks.new>` somewhere, and no route may match
/// a `...stack` header augur does not write (a client could send it).
fn check_envoy(c: &Config, path: &str) -> Result<String, String> {
    let text = read(path)?;
    let v: serde_json::Value = serde_yaml::from_slice(&text)
        .map_err(|e| format!("{path}: not an Envoy configuration (YAML or JSON): {e}"))?;
    let h = &c.headers;
    let written = |name: &str| name == h.stack || h.previous_stack.iter().any(|p| p == name);
    let mut all = Vec::new();
    routes(&v, &mut all);
    let mut reaches_new = Vec::new();
    for (i, r) in all.iter().enumerate() {
        let route = r.get("name").and_then(|n| n.as_str()).map_or_else(|| format!("#{i}"), str::to_string);
        let matchers = r.pointer("/match/headers").and_then(|x| x.as_array()).cloned().unwrap_or_default();
        for m in &matchers {
            let Some(name) = m.get("name").and_then(|n| n.as_str()).map(str::to_ascii_lowercase) else {
                continue;
            };
            let exact =
                m.pointer("/string_match/exact").or_else(|| m.get("exact_match")).and_then(|x| x.as_str());
            if written(&name) {
                if exact == Some(c.new_stack.as_str()) {
                    reaches_new.push(format!("{route} ({name})"));
                }
            } else if name.ends_with("stack") || h.is_control(&name) {
                let why = if h.is_control(&name) {
                    "which augur strips but no longer writes: that route is unreachable".to_string()
                } else {
                    "which augur neither writes nor strips: a client could send it and choose its stack"
                        .to_string()
                };
                return Err(format!(
                    "{path}: route \"{route}\" matches header \"{name}\", {why}; the configuration (control_header_prefix \"{}\") writes \"{}\": match that in the route table, or add the old prefix to previous_control_header_prefixes during a migration",
                    h.prefix, h.stack
                ));
            }
        }
    }
    if reaches_new.is_empty() {
        return Err(format!(
            "{path}: no route matches header \"{}\" exactly \"{}\": the new stack is unreachable; add a route with match.headers [{{name: {}, string_match: {{exact: {}}}}}]",
            h.stack, c.new_stack, h.stack, c.new_stack
        ));
    }
    let actions = underscores_action(&v);
    if !actions.iter().any(|a| a == "REJECT_REQUEST" || a == "DROP_HEADER") {
        eprintln!(
            "augur: warning: {path}: no http_connection_manager sets common_http_protocol_options.headers_with_underscores_action to DROP_HEADER or REJECT_REQUEST; augur strips its own '_' look-alikes, but apps that fold '_' into '-' see every other one"
        );
    }
    Ok(format!("ok: {path}: \"{}: {}\" routes via {}", h.stack, c.new_stack, reaches_new.join(", ")))
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

//! Worker states for the benchmarks, shared by `benches/decide.rs` (native)
//! and `examples/vm_bench.rs` (inside a wasm VM): the request paths the
//! rollback adds, each timed against the quiet one.

use augur::engine::Worker;
use augur::rollback::cells::MASK_WORDS;

/// `config` with every user on the new stack (the benchmark user is on the
/// old one at the demo's 30%): the states below act only there.
pub fn all_new(config: &[u8]) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(config).unwrap();
    json["rollout"]["percentage"] = 100.into();
    json["rollout"]["by_segment"] = serde_json::json!([]);
    serde_json::to_vec(&json).unwrap()
}

/// The timed states on `config`, each with its name: quiet, every cell
/// exploring, every feature blocked and probed.
pub fn states(config: &augur::config::Config) -> [(&'static str, Worker); 3] {
    let (mut explores, mut probes) = (Worker::new(config), Worker::new(config));
    exploring(&mut explores);
    probing(&mut probes);
    [("quiet", Worker::new(config)), ("exploring", explores), ("probing", probes)]
}

/// Every feature blocked in every cell, its blocks settled and probed
/// (`probe_share` of the blocked requests drawn back on).
pub fn probing(worker: &mut Worker) {
    let features = worker.blocks.cells.len();
    worker.blocks.cells.iter_mut().for_each(|m| *m = [u64::MAX; MASK_WORDS]);
    worker.blocks.probing = if features >= 64 { u64::MAX } else { (1 << features) - 1 };
}

/// Every single cell suspect: each request's features drawn for exploration.
pub fn exploring(worker: &mut Worker) {
    worker.blocks.suspect = (1 << augur::rollback::CELLS) - 1;
}

/// How often each flag reason came out of 1,000 decisions of `req` by
/// `worker`: shows that a timed state takes the path it names.
pub fn reasons(
    config: &augur::config::Config,
    worker: &mut Worker,
    req: &(impl augur::headers::Headers + ?Sized),
) -> String {
    let mut d = augur::engine::Decision::default();
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for _ in 0..1000 {
        augur::engine::decide(config, worker, req, &mut d);
        for f in &d.flags {
            *counts.entry(f.reason.as_str()).or_default() += 1;
        }
    }
    counts.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
}

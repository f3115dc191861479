//! Fuzz-style harnesses that run on stable Rust in `make test`: each target
//! mutates a seed corpus (byte flips, inserts, deletes, splices, truncation)
//! for a bounded time, `FUZZ_SECONDS` per target (default 2), through the same
//! entry points as the cargo-fuzz targets in `fuzz/` (nightly, not in CI).
//! 0 panics: a panic in the filter aborts its VM (panic = "abort").
//! Reproducible: `FUZZ_SEED` fixes the mutation stream (printed on start).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use augur::config::compile;
use augur::headers::{HeaderMap, Headers};
use augur::model::Model;
use augur::rollback::{Blocks, Counts};

const DEMO: &[u8] = include_bytes!("../envoy/augur-demo.json");
const DEFAULT_MODEL: &[u8] = include_bytes!("../models/default.onnx");

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e39",
    b"NaN",
    b"\\u0000",
    b"\xff",
    b"\x00",
    b"\"x_augur_stack\"",
    b"\"x-ctl-\"",
    b"4294967295",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(input.len() + 1);
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, tok.iter().copied());
            }
            3 if !input.is_empty() => {
                let a = rng.below(input.len());
                let b = (a + rng.below(16)).min(input.len());
                input.drain(a..b);
            }
            4 => {
                let n = rng.below(input.len() + 1);
                input.truncate(n);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + rng.below(64)).min(other.len());
                    let i = rng.below(input.len() + 1);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if input.len() >= 4 => {
                // A length field: the header-map and codec layouts are u32 LE.
                let i = rng.below(input.len() - 3);
                let v = [0u32, 1, 0x7fff_ffff, u32::MAX, 64, 65][rng.below(6)];
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

fn fuzz(name: &str, corpus: Vec<Vec<u8>>, mut target: impl FnMut(&[u8])) {
    let seconds = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0f64);
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    eprintln!("fuzz {name}: {seconds} s, FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut runs = 0u64;
    for c in &corpus {
        target(c);
    }
    let mut input = Vec::new();
    while Instant::now() < deadline {
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        mutate(&mut rng, &corpus, &mut input);
        target(&input);
        runs += 1;
    }
    eprintln!("fuzz {name}: {runs} inputs, 0 panics");
}

#[test]
fn fuzz_config_json() {
    let small = br#"{"rollout": {"percentage": 5}, "segments": [{"name": "s", "users": ["a"]}], "features": [{"name": "a", "override": "on", "allow_segments": ["s"]}]}"#;
    fuzz("config", vec![DEMO.to_vec(), small.to_vec()], |b| {
        let _ = compile(b);
    });
}

#[test]
fn fuzz_header_map_buffers() {
    let seed = HeaderMap::serialize([
        (":path", &b"/api/checkout"[..]),
        ("x-user-id", b"caf\xe9"),
        ("x_augur_stack", b"new"),
        ("user-agent", b"Mozilla/5.0 (iPad)"),
    ]);
    fuzz("header_map", vec![seed, HeaderMap::serialize([]), vec![1, 0, 0, 0]], |b| {
        let mut m = HeaderMap::default();
        if m.load(b.to_vec()).is_ok() {
            for (name, _) in m.iter() {
                let _ = m.header_bytes(name);
            }
            let _ = m.header("x-user-id");
        }
    });
}

#[test]
fn fuzz_model_bytes() {
    fuzz("model", vec![DEFAULT_MODEL.to_vec()], |b| {
        if let Ok(m) = Model::from_onnx(b) {
            if let Ok(mut s) = m.session() {
                let mut out = Vec::new();
                let _ = s.predict(&[0.25; augur::profile::INPUT_DIM], &mut out);
            }
        }
    });
}

#[test]
fn fuzz_shared_data_codec() {
    let mut counts = Vec::new();
    Counts::new(3).encode(&mut counts);
    let mut blocks = Vec::new();
    Blocks::new(3).encode(&mut blocks);
    fuzz("shared_codec", vec![counts, blocks], |b| {
        for features in [0, 1, 3, 64] {
            if let Some(c) = Counts::decode(b, features) {
                let mut out = Vec::new();
                c.encode(&mut out);
            }
            if let Some(x) = Blocks::decode(b, features) {
                let mut out = Vec::new();
                x.encode(&mut out);
            }
        }
    });
}

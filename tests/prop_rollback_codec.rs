//! Property tests of the rollback shared-data codec (`Counts` / `Blocks`),
//! through the public encode/decode API only: the types' layout is being
//! reworked, so nothing here depends on it. Shared data is written by other
//! workers (and other module versions): any bytes must decode to a value or
//! to `None`, never a panic, and whatever decodes must re-encode stably.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use augur::rollback::{Blocks, Counts};
use proptest::prelude::*;

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

fn encoded_counts(c: &Counts) -> Vec<u8> {
    let mut out = Vec::new();
    c.encode(&mut out);
    out
}

fn encoded_blocks(b: &Blocks) -> Vec<u8> {
    let mut out = Vec::new();
    b.encode(&mut out);
    out
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn counts_decode_any_bytes_without_panicking_and_re_encode_stably(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        features in 0usize..=64,
    ) {
        if let Some(c) = Counts::decode(&bytes, features) {
            let once = encoded_counts(&c);
            let again = Counts::decode(&once, features).map(|c| encoded_counts(&c));
            prop_assert_eq!(again, Some(once));
        }
    }

    #[test]
    fn blocks_decode_any_bytes_without_panicking_and_re_encode_stably(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        features in 0usize..=64,
    ) {
        if let Some(b) = Blocks::decode(&bytes, features) {
            let once = encoded_blocks(&b);
            let again = Blocks::decode(&once, features).map(|b| encoded_blocks(&b));
            prop_assert_eq!(again, Some(once));
        }
    }

    #[test]
    fn fresh_values_round_trip_and_reject_other_feature_counts_or_truncation(
        features in 1usize..=64,
        cut in any::<prop::sample::Index>(),
    ) {
        let c = Counts::new(features);
        let bytes = encoded_counts(&c);
        prop_assert_eq!(Counts::decode(&bytes, features).map(|c| encoded_counts(&c)), Some(bytes.clone()));
        let b = Blocks::new(features);
        let bb = encoded_blocks(&b);
        prop_assert_eq!(Blocks::decode(&bb, features).map(|b| encoded_blocks(&b)), Some(bb.clone()));
        // A strict prefix never decodes as a whole value of the same shape.
        let n = cut.index(bytes.len());
        if let Some(short) = Counts::decode(&bytes[..n], features) {
            prop_assert_ne!(encoded_counts(&short), bytes);
        }
    }
}

#![no_main]
use augur::rollback::{Blocks, Counts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&features, bytes)) = data.split_first() else { return };
    let features = usize::from(features % 65);
    if let Some(c) = Counts::decode(bytes, features) {
        let mut out = Vec::new();
        c.encode(&mut out);
    }
    if let Some(b) = Blocks::decode(bytes, features) {
        let mut out = Vec::new();
        b.encode(&mut out);
    }
});

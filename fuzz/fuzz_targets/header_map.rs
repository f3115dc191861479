#![no_main]
use augur::headers::{HeaderMap, Headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = HeaderMap::default();
    if m.load(data.to_vec()).is_ok() {
        for (name, _) in m.iter() {
            let _ = m.header_bytes(name);
        }
    }
});

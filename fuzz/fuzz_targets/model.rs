#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = augur::model::Model::from_onnx(data) {
        if let Ok(mut s) = m.session() {
            let mut out = Vec::new();
            let _ = s.predict(&[0.5; augur::profile::INPUT_DIM], &mut out);
        }
    }
});

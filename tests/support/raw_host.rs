//! The test stand-ins for the proxy that `tests/holes.rs` and
//! `tests/properties.rs` share: a host over raw header bytes (values need not
//! be UTF-8) and a stats sink that drops everything.

use augur::headers::HeaderMap;
use augur::metrics::{MetricKind, MetricSink};
use augur::stream::Host;

/// A proxy stand-in over raw header bytes.
#[derive(Default)]
pub struct RawHost {
    pub headers: Vec<(String, Vec<u8>)>,
    pub response: Vec<(String, Vec<u8>)>,
    pub record: Option<String>,
}

fn set_pair(pairs: &mut Vec<(String, Vec<u8>)>, name: &str, value: Option<&str>) {
    pairs.retain(|(k, _)| k != name);
    if let Some(v) = value {
        pairs.push((name.to_string(), v.as_bytes().to_vec()));
    }
}

fn load(pairs: &[(String, Vec<u8>)], into: &mut HeaderMap) {
    // A map serialised here always parses; an empty one otherwise.
    let _ = into.load(HeaderMap::serialize(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))));
}

#[allow(dead_code)] // each test crate uses its own part
impl RawHost {
    pub fn with(pairs: &[(&str, &str)]) -> RawHost {
        RawHost {
            headers: pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            ..RawHost::default()
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
    pub fn record(&self) -> serde_json::Value {
        serde_json::from_str(self.record.as_deref().expect("a record")).expect("JSON")
    }
}

impl Host for RawHost {
    fn request_headers(&self, into: &mut HeaderMap) {
        load(&self.headers, into);
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set_pair(&mut self.headers, name, value);
    }
    fn set_decision_record(&mut self, record: &str) {
        self.record = Some(record.to_string());
    }
    fn response_headers(&self, into: &mut HeaderMap) {
        load(&self.response, into);
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set_pair(&mut self.response, name, value);
    }
    fn set_outcome_record(&mut self, _: &str) {}
    fn now_nanos(&self) -> u64 {
        0
    }
}

/// A stats sink that drops everything.
pub struct NullSink;

impl MetricSink for NullSink {
    fn define(&mut self, _: MetricKind, _: &str) -> Option<u32> {
        Some(0)
    }
    fn increment(&mut self, _: u32, _: i64) {}
    fn record(&mut self, _: u32, _: u64) {}
}

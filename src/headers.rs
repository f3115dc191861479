//! Read access to request headers, so every pure stage can be driven by a plain
//! list in tests and by the proxy's header map in the filter.

/// Lookup of a header by its lowercase name.
pub trait Headers {
    /// The first value of header `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<&str>;
}

/// Envoy hands headers over as a list of lowercase `(name, value)` pairs; a
/// linear scan of a typical 10-30 header request beats building a map.
impl Headers for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Headers for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

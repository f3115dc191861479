//! Read access to request headers, so every pure stage can be driven by a plain
//! list in tests and by the proxy's header map in the filter.

/// Lookup of a header by its lowercase name.
pub trait Headers {
    /// The first value of header `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<&str>;

    /// The first value of header `name` as bytes, also when it is not UTF-8
    /// (HTTP/1.1 allows obs-text): what user ids are hashed from.
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.header(name).map(str::as_bytes)
    }
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

/// A header map in the proxy-wasm serialisation, read in place.
///
/// Why: the SDK's `get_map` copies every name and value into its own `String`
/// (two allocations per header, per request) and panics on a value that is not
/// UTF-8 — which HTTP/1.1 allows (obs-text). Here the proxy's one buffer is kept
/// and indexed; a value that is not UTF-8 reads as absent, never as a crash.
///
/// Layout (little-endian): `u32 count`, then `count × (u32 name_len, u32
/// value_len)`, then each name and value followed by a NUL byte.
#[derive(Debug, Default, Clone)]
pub struct HeaderMap {
    buf: Buf,
    /// Per pair: name start, name end, value start, value end (in `buf`), and
    /// whether the value is UTF-8.
    pairs: Vec<Pair>,
}

/// The proxy's buffer, checked as UTF-8 once as a whole: nearly every request
/// is, and then a name or value is a slice of a `str` (no check per read).
/// The serialisation's separators are ASCII, so every pair of a valid buffer
/// starts and ends on a character boundary.
#[derive(Debug, Clone)]
enum Buf {
    Text(String),
    /// Some name or value is not UTF-8 (HTTP/1.1 obs-text): checked per pair.
    Bytes(Vec<u8>),
}

impl Default for Buf {
    fn default() -> Buf {
        Buf::Text(String::new())
    }
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Text(s) => s.as_bytes(),
            Buf::Bytes(b) => b,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    name: (u32, u32),
    value: (u32, u32),
    value_utf8: bool,
}

impl Pair {
    fn name_len(&self) -> usize {
        (self.name.1 - self.name.0) as usize
    }
}

/// The buffer does not follow the serialisation (the map is left empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedMap;

impl HeaderMap {
    /// Takes and indexes a serialised map; on malformed input the map is empty.
    /// The pair index keeps its capacity across calls: no allocation per request
    /// once warm.
    pub fn load(&mut self, bytes: Vec<u8>) -> Result<(), MalformedMap> {
        self.buf = match String::from_utf8(bytes) {
            Ok(text) => Buf::Text(text),
            Err(e) => Buf::Bytes(e.into_bytes()),
        };
        self.pairs.clear();
        let r = self.index();
        if r.is_err() {
            self.pairs.clear();
        }
        r
    }

    /// Empties the map (the proxy returned no map).
    pub fn clear(&mut self) {
        self.buf = Buf::default();
        self.pairs.clear();
    }

    fn index(&mut self) -> Result<(), MalformedMap> {
        let text = matches!(self.buf, Buf::Text(_));
        let buf = self.buf.bytes();
        if buf.is_empty() {
            return Ok(());
        }
        let u32_at = |at: usize| -> Result<usize, MalformedMap> {
            let b = buf.get(at..at + 4).ok_or(MalformedMap)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = u32_at(0)?;
        let mut p = count.checked_mul(8).and_then(|n| n.checked_add(4)).ok_or(MalformedMap)?;
        if p > buf.len() || buf.len() > u32::MAX as usize {
            return Err(MalformedMap);
        }
        for i in 0..count {
            let (name_len, value_len) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
            // Each name and value is followed by a NUL, so its end must be
            // strictly inside the buffer.
            let name_end = p.checked_add(name_len).filter(|e| *e < buf.len()).ok_or(MalformedMap)?;
            let name = (p, name_end);
            let value_end =
                (name_end + 1).checked_add(value_len).filter(|e| *e < buf.len()).ok_or(MalformedMap)?;
            let value = (name_end + 1, value_end);
            p = value_end + 1;
            // Envoy's codecs only admit token characters in names; a name that is
            // not UTF-8 cannot be one augur reads or strips, so it is skipped.
            if !text && std::str::from_utf8(&buf[name.0..name.1]).is_err() {
                continue;
            }
            let value_utf8 = text || std::str::from_utf8(&buf[value.0..value.1]).is_ok();
            self.pairs.push(Pair {
                name: (name.0 as u32, name.1 as u32),
                value: (value.0 as u32, value.1 as u32),
                value_utf8,
            });
        }
        Ok(())
    }

    /// Serialises pairs the way the proxy does (tests and the CLI).
    pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
        let list: Vec<(&str, &[u8])> = pairs.into_iter().collect();
        let mut out = Vec::new();
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for (k, v) in &list {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &list {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// A map holding `pairs` (tests and the CLI).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::default();
        // A freshly serialised map is well formed.
        let _ = m.load(HeaderMap::serialize(pairs.iter().map(|(k, v)| (*k, v.as_bytes()))));
        m
    }

    fn str_at(&self, (a, b): (u32, u32)) -> &str {
        // Checked UTF-8 at load; an empty string if that ever did not hold.
        let range = a as usize..b as usize;
        match &self.buf {
            Buf::Text(s) => s.get(range).unwrap_or_default(),
            Buf::Bytes(buf) => std::str::from_utf8(buf.get(range).unwrap_or_default()).unwrap_or_default(),
        }
    }

    /// The first pair named `name`: lengths compared before bytes (most names
    /// differ in length), no UTF-8 check.
    fn find(&self, name: &str) -> Option<&Pair> {
        let buf = self.buf.bytes();
        self.pairs.iter().find(|p| {
            p.name_len() == name.len()
                && buf.get(p.name.0 as usize..p.name.1 as usize) == Some(name.as_bytes())
        })
    }

    /// The header names in order (what the control-header strip scans).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|p| self.str_at(p.name))
    }

    /// `(name, value)` pairs in order; `value` is `None` when it is not UTF-8.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.pairs.iter().map(|p| (self.str_at(p.name), p.value_utf8.then(|| self.str_at(p.value))))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Drops the pairs whose name fails `keep` (the buffer is untouched).
    pub fn retain_names(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut pairs = std::mem::take(&mut self.pairs);
        pairs.retain(|p| keep(self.str_at(p.name)));
        self.pairs = pairs;
    }
}

impl Headers for HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.find(name).and_then(|p| p.value_utf8.then(|| self.str_at(p.value)))
    }

    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        let p = self.find(name)?;
        self.buf.bytes().get(p.value.0 as usize..p.value.1 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pairs_in_order_with_duplicates_and_empty_values() {
        let m = HeaderMap::from_pairs(&[(":path", "/a"), ("x-a", ""), ("x-a", "2"), ("host", "h")]);
        assert_eq!(m.len(), 4);
        let got: Vec<_> = m.iter().collect();
        assert_eq!(got, [(":path", Some("/a")), ("x-a", Some("")), ("x-a", Some("2")), ("host", Some("h"))]);
        assert_eq!(m.header("x-a"), Some(""), "first value wins");
        assert_eq!(m.header("host"), Some("h"));
        assert_eq!(m.header("missing"), None);
    }

    #[test]
    fn a_value_that_is_not_utf8_reads_as_absent() {
        let bytes = HeaderMap::serialize([("x-user-id", &b"caf\xe9"[..]), ("x-ok", &b"yes"[..])]);
        let mut m = HeaderMap::default();
        m.load(bytes).unwrap();
        assert_eq!(m.header("x-user-id"), None);
        assert_eq!(m.header("x-ok"), Some("yes"));
        assert_eq!(m.iter().next(), Some(("x-user-id", None)), "the name is still listed (for stripping)");
    }

    #[test]
    fn malformed_buffers_give_an_empty_map_not_a_panic() {
        let good = HeaderMap::serialize([("a", &b"1"[..]), ("bb", &b"22"[..])]);
        let mut m = HeaderMap::default();
        for cut in 1..good.len() {
            assert_eq!(m.load(good[..cut].to_vec()), Err(MalformedMap), "cut at {cut}");
            assert!(m.is_empty());
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(m.load(huge), Err(MalformedMap));
        let mut long_name = good.clone();
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(m.load(long_name), Err(MalformedMap));
        assert_eq!(m.load(Vec::new()), Ok(()));
        assert!(m.is_empty());
        assert_eq!(m.load(good), Ok(()));
        assert_eq!(m.header("bb"), Some("22"));
    }

    #[test]
    fn retain_names_drops_pairs() {
        let mut m = HeaderMap::from_pairs(&[("x-augur-stack", "new"), ("a", "1"), ("x-augur-x", "2")]);
        m.retain_names(|n| !n.starts_with("x-augur-"));
        assert_eq!(m.iter().collect::<Vec<_>>(), [("a", Some("1"))]);
        assert_eq!(m.header("x-augur-stack"), None);
    }
}

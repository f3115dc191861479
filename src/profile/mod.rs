//! Profile: turns a request's headers into typed attributes (device, location,
//! path class, method, history), and those into the model's input vector.
//!
//! This module is the *one* definition of the feature-vector encoding. The filter
//! calls [`encode`] per request; the trainer (`augur_tools.loop.train`) gets its vectors from
//! `augur encode`, which calls the same function, so the two can never drift.
//! Every slot is documented in [`SLOTS`] (printed by `augur schema`).

use crate::hash::stable_hash;
use crate::headers::Headers;

pub mod config;

/// Identifies this encoding. A model carries it in its ONNX metadata
/// (`augur.schema`) and the filter refuses a model trained for another one.
pub const SCHEMA_ID: &str = "augur-profile-v1";
/// Length of the input vector.
pub const INPUT_DIM: usize = 20;
/// Maximum number of configurable locations (one-hot slots).
pub const MAX_LOCATIONS: usize = 4;
/// Maximum number of configurable path classes (one-hot slots).
pub const MAX_PATH_CLASSES: usize = 4;
/// Maximum number of configurable history signals.
pub const MAX_HISTORY: usize = 4;

/// Payload sizes are log-scaled against this size (10 MB → 1.0).
const PAYLOAD_SCALE_BYTES: f32 = 10_000_000.0;

/// The model's input vector.
pub type Vector = [f32; INPUT_DIM];

/// One slot of the input vector.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub name: &'static str,
    pub doc: &'static str,
}

const fn slot(name: &'static str, doc: &'static str) -> Slot {
    Slot { name, doc }
}

/// The encoding, slot by slot. `SLOTS[i]` describes `vector[i]`.
pub const SLOTS: [Slot; INPUT_DIM] = [
    slot("user_bucket", "hash of the user id mapped to [0,1); 0 when absent"),
    slot("user_present", "1 when the user-id header is present"),
    slot("device_mobile", "1 when the User-Agent is a phone"),
    slot("device_tablet", "1 when the User-Agent is a tablet"),
    slot("device_desktop", "1 when the User-Agent is a desktop browser"),
    slot("device_bot", "1 when the User-Agent is a crawler or bot"),
    slot("location_0", "1 when the geo header equals profile.locations[0]"),
    slot("location_1", "1 when the geo header equals profile.locations[1]"),
    slot("location_2", "1 when the geo header equals profile.locations[2]"),
    slot("location_3", "1 when the geo header equals profile.locations[3]"),
    slot("method_write", "1 for POST, PUT, PATCH, DELETE"),
    slot("path_class_0", "1 when the path starts with profile.path_classes[0]"),
    slot("path_class_1", "1 when the first matching class is profile.path_classes[1]"),
    slot("path_class_2", "1 when the first matching class is profile.path_classes[2]"),
    slot("path_class_3", "1 when the first matching class is profile.path_classes[3]"),
    slot("payload_size", "ln(1+content-length)/ln(1+10MB), clamped to [0,1]"),
    slot("history_0", "profile.history[0] header value / its max, clamped to [0,1]"),
    slot("history_1", "profile.history[1] header value / its max, clamped to [0,1]"),
    slot("history_2", "profile.history[2] header value / its max, clamped to [0,1]"),
    slot("history_3", "profile.history[3] header value / its max, clamped to [0,1]"),
];

const SLOT_USER_BUCKET: usize = 0;
const SLOT_USER_PRESENT: usize = 1;
const SLOT_DEVICE: usize = 2;
const SLOT_LOCATION: usize = 6;
const SLOT_METHOD_WRITE: usize = 10;
const SLOT_PATH_CLASS: usize = 11;
const SLOT_PAYLOAD: usize = 15;
const SLOT_HISTORY: usize = 16;

/// Device class derived from the User-Agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Mobile,
    Tablet,
    Desktop,
    Bot,
    Unknown,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Desktop => "desktop",
            Device::Bot => "bot",
            Device::Unknown => "unknown",
        }
    }

    /// Index into the four device slots; `None` for unknown devices.
    pub(crate) fn slot(self) -> Option<usize> {
        match self {
            Device::Mobile => Some(0),
            Device::Tablet => Some(1),
            Device::Desktop => Some(2),
            Device::Bot => Some(3),
            Device::Unknown => None,
        }
    }
}

/// Classifies a User-Agent. Bots first (many bot UAs also say "Mobile"), then
/// tablets (iPads and Android without "Mobile"), then phones, then desktops.
pub fn classify_device(user_agent: Option<&str>) -> Device {
    let Some(ua) = user_agent else {
        return Device::Unknown;
    };
    // Lowercase once into a stack buffer, then one pass that notes which
    // tokens occur (a first-byte table picks the candidates at each offset):
    // one scan instead of one per token. Only the first UA_SCAN bytes are
    // read; the tokens sit well before that.
    let mut buf = [0u8; UA_SCAN];
    let n = ua.len().min(UA_SCAN);
    for (d, s) in buf.iter_mut().zip(ua.as_bytes()) {
        *d = s.to_ascii_lowercase();
    }
    let found = ua_tokens(&buf[..n]);
    let has = |t: u16| found & t != 0;
    if has(BOT | SPIDER | CRAWL | SLURP) {
        Device::Bot
    } else if has(IPAD | TABLET) || (has(ANDROID) && !has(MOBILE)) {
        Device::Tablet
    } else if has(MOBILE | IPHONE | ANDROID) {
        Device::Mobile
    } else if has(WINDOWS | MACINTOSH | X11 | LINUX | CROS) {
        Device::Desktop
    } else {
        Device::Unknown
    }
}

/// User-Agent bytes [`classify_device`] reads.
const UA_SCAN: usize = 512;

/// The User-Agent tokens [`classify_device`] looks for; bit `i` of a token
/// set is `UA_TOKENS[i]`.
const UA_TOKENS: [&[u8]; 14] = [
    b"bot",
    b"spider",
    b"crawl",
    b"slurp",
    b"ipad",
    b"tablet",
    b"android",
    b"mobile",
    b"iphone",
    b"windows",
    b"macintosh",
    b"x11",
    b"linux",
    b"cros",
];

/// The bit of token `t` in a token set; 0 when `t` is not in [`UA_TOKENS`]
/// (refused at compile time below).
const fn token(t: &[u8]) -> u16 {
    let mut i = 0;
    while i < UA_TOKENS.len() {
        let u = UA_TOKENS[i];
        let mut same = u.len() == t.len();
        let mut j = 0;
        while same && j < u.len() {
            same = u[j] == t[j];
            j += 1;
        }
        if same {
            return 1 << i;
        }
        i += 1;
    }
    0
}
const BOT: u16 = token(b"bot");
const SPIDER: u16 = token(b"spider");
const CRAWL: u16 = token(b"crawl");
const SLURP: u16 = token(b"slurp");
const IPAD: u16 = token(b"ipad");
const TABLET: u16 = token(b"tablet");
const ANDROID: u16 = token(b"android");
const MOBILE: u16 = token(b"mobile");
const IPHONE: u16 = token(b"iphone");
const WINDOWS: u16 = token(b"windows");
const MACINTOSH: u16 = token(b"macintosh");
const X11: u16 = token(b"x11");
const LINUX: u16 = token(b"linux");
const CROS: u16 = token(b"cros");
const _: () = {
    let all = [
        BOT, SPIDER, CRAWL, SLURP, IPAD, TABLET, ANDROID, MOBILE, IPHONE, WINDOWS, MACINTOSH, X11, LINUX,
        CROS,
    ];
    let mut i = 0;
    while i < all.len() {
        assert!(all[i] != 0, "a device token missing from UA_TOKENS");
        i += 1;
    }
};

/// Per byte, the tokens that start with it.
const UA_FIRST: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < UA_TOKENS.len() {
        t[UA_TOKENS[i][0] as usize] |= 1 << i;
        i += 1;
    }
    t
};

/// The set of [`UA_TOKENS`] that occur in `lower`.
fn ua_tokens(lower: &[u8]) -> u16 {
    let mut found = 0u16;
    for (i, &b) in lower.iter().enumerate() {
        let mut cand = UA_FIRST[b as usize] & !found;
        while cand != 0 {
            let t = cand.trailing_zeros() as usize;
            cand &= cand - 1;
            if lower[i..].starts_with(UA_TOKENS[t]) {
                found |= 1 << t;
            }
        }
    }
    found
}

/// A history signal: a trusted header carrying a number, scaled by `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySignal {
    pub header: String,
    pub max: f32,
}

/// What the profile reads, compiled from `profile` in the plugin configuration.
/// Header names are lowercase (Envoy hands headers over lowercased).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSpec {
    pub user_header: String,
    pub location_header: String,
    pub locations: Vec<String>,
    pub path_classes: Vec<String>,
    pub history: Vec<HistorySignal>,
}

/// The profile of one request: typed attributes read from the headers. The
/// model's input [`Profile::vector`] and the rollback cells
/// ([`crate::rollback::cells()`]) are both computed from these fields, so
/// neither ever decodes the other.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The user id's hash mapped to `[0,1)` (24 bits, exact in f32), when the
    /// request carries a user id.
    pub user_bucket: Option<f32>,
    pub device: Device,
    /// Index into `profile.locations`; `None`: absent or another location.
    pub location: Option<usize>,
    /// Index of the first `profile.path_classes` prefix the path starts with.
    pub path_class: Option<usize>,
    /// POST, PUT, PATCH or DELETE.
    pub write: bool,
    /// `ln(1+content-length)/ln(1+10MB)`, clamped to `[0,1]`.
    pub payload: f32,
    /// Each history signal divided by its max, clamped to `[0,1]`; 0 when absent.
    pub history: [f32; MAX_HISTORY],
    /// Bit `i` set when the request is in `segments[i]` (set by the engine
    /// once the model has run: [`crate::segments::evaluate`]).
    pub segments: u64,
    /// The model's input, derived from the fields above by [`encode`].
    pub vector: Vector,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            user_bucket: None,
            device: Device::Unknown,
            location: None,
            path_class: None,
            write: false,
            payload: 0.0,
            history: [0.0; MAX_HISTORY],
            segments: 0,
            vector: [0.0; INPUT_DIM],
        }
    }
}

impl Profile {
    /// Whether history signal `h` is in its upper half (its rollback cell).
    pub fn history_high(&self, h: usize) -> bool {
        self.history.get(h).is_some_and(|x| *x >= 0.5)
    }

    /// The model's input vector, slot by slot as [`SLOTS`] documents it.
    fn to_vector(&self) -> Vector {
        let mut v = [0.0; INPUT_DIM];
        if let Some(bucket) = self.user_bucket {
            v[SLOT_USER_BUCKET] = bucket;
            v[SLOT_USER_PRESENT] = 1.0;
        }
        let mut one_hot = |from: usize, i: Option<usize>, n: usize| {
            if let Some(i) = i.filter(|i| *i < n) {
                v[from + i] = 1.0;
            }
        };
        one_hot(SLOT_DEVICE, self.device.slot(), 4);
        one_hot(SLOT_LOCATION, self.location, MAX_LOCATIONS);
        one_hot(SLOT_PATH_CLASS, self.path_class, MAX_PATH_CLASSES);
        v[SLOT_METHOD_WRITE] = if self.write { 1.0 } else { 0.0 };
        v[SLOT_PAYLOAD] = self.payload;
        v[SLOT_HISTORY..SLOT_HISTORY + MAX_HISTORY].copy_from_slice(&self.history);
        v
    }
}

/// Encodes a request into `profile` (every field but `segments`). Pure:
/// reads headers only.
pub fn encode(spec: &ProfileSpec, req: &(impl Headers + ?Sized), profile: &mut Profile) {
    // As bytes: an id that is not UTF-8 (obs-text) is still that user, not anonymous.
    let user = req.header_bytes(&spec.user_header).filter(|u| !u.is_empty());
    // 24 bits are plenty for a [0,1) bucket and exact in f32.
    profile.user_bucket = user.map(|u| (stable_hash(&[u]) >> 40) as f32 / (1u64 << 24) as f32);

    profile.device = classify_device(req.header("user-agent"));

    let location = req.header(&spec.location_header).map(str::trim);
    profile.location =
        location.and_then(|loc| spec.locations.iter().position(|l| l.eq_ignore_ascii_case(loc)));

    profile.write = req
        .header(":method")
        .is_some_and(|m| ["POST", "PUT", "PATCH", "DELETE"].iter().any(|w| w.eq_ignore_ascii_case(m)));

    profile.path_class = req
        .header(":path")
        .and_then(|path| spec.path_classes.iter().position(|p| path.starts_with(p.as_str())));

    profile.payload = 0.0;
    if let Some(len) = req.header("content-length").and_then(|s| s.trim().parse::<f64>().ok()) {
        // Beyond f64 parses as infinity and clamps to 1 like any huge value.
        if len > 0.0 {
            let scaled = (len.ln_1p() / f64::from(PAYLOAD_SCALE_BYTES).ln_1p()) as f32;
            profile.payload = scaled.clamp(0.0, 1.0);
        }
    }

    profile.history = [0.0; MAX_HISTORY];
    for (slot, signal) in profile.history.iter_mut().zip(&spec.history) {
        // Parsed as f64 and clamped before narrowing: `1e39` (beyond f32) or
        // `1e400` (beyond f64, infinity) encodes like any large value (1.0),
        // never as 0; only NaN is "no value".
        let value = req.header(&signal.header).and_then(|s| s.trim().parse::<f64>().ok());
        if let Some(x) = value.filter(|x| !x.is_nan()) {
            *slot = (x / f64::from(signal.max)).clamp(0.0, 1.0) as f32;
        }
    }

    profile.segments = 0;
    profile.vector = profile.to_vector();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass token scan finds exactly the tokens a search per token finds.
        #[test]
        fn ua_tokens_match_a_search_per_token(
            parts in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(UA_TOKENS.to_vec()).prop_map(<[u8]>::to_vec),
                    proptest::collection::vec(proptest::sample::select(b"abcilmnoprstwx1 /;()".to_vec()), 0..6),
                ],
                0..12,
            )
        ) {
            let ua: Vec<u8> = parts.concat();
            let naive = UA_TOKENS.iter().enumerate().fold(0u16, |m, (i, t)| {
                if ua.windows(t.len()).any(|w| w == *t) { m | 1 << i } else { m }
            });
            prop_assert_eq!(ua_tokens(&ua), naive);
        }
    }

    fn spec() -> ProfileSpec {
        ProfileSpec {
            user_header: "x-user-id".into(),
            location_header: "x-geo".into(),
            locations: vec!["us".into(), "eu".into()],
            path_classes: vec!["/api/checkout".into(), "/api".into()],
            history: vec![HistorySignal { header: "x-sessions".into(), max: 50.0 }],
        }
    }

    fn req(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn profile_of(pairs: &[(&str, &str)]) -> Profile {
        let mut p = Profile::default();
        encode(&spec(), &req(pairs), &mut p);
        p
    }

    #[test]
    fn schema_has_one_named_slot_per_dimension() {
        let mut names: Vec<_> = SLOTS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), INPUT_DIM);
    }

    #[test]
    fn empty_request_is_all_zero() {
        let p = profile_of(&[]);
        assert_eq!(p.vector, [0.0; INPUT_DIM]);
        assert_eq!(p.device, Device::Unknown);
    }

    #[test]
    fn encodes_every_slot_group() {
        let p = profile_of(&[
            ("x-user-id", "alice"),
            ("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile"),
            ("x-geo", "EU"),
            (":method", "post"),
            (":path", "/api/checkout/pay?x=1"),
            ("content-length", "10000000"),
            ("x-sessions", "25"),
        ]);
        let v = p.vector;
        assert!(v[0] > 0.0 && v[0] < 1.0);
        assert_eq!(v[1], 1.0);
        assert_eq!(&v[2..6], &[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(&v[6..10], &[0.0, 1.0, 0.0, 0.0]);
        assert_eq!(v[10], 1.0);
        assert_eq!(&v[11..15], &[1.0, 0.0, 0.0, 0.0], "first matching prefix wins");
        assert!((v[15] - 1.0).abs() < 1e-6);
        assert!((v[16] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn user_bucket_is_stable_and_spread() {
        let a = profile_of(&[("x-user-id", "alice")]).vector[0];
        let a2 = profile_of(&[("x-user-id", "alice")]).vector[0];
        let b = profile_of(&[("x-user-id", "bob")]).vector[0];
        assert_eq!(a, a2);
        assert_ne!(a, b);
    }

    #[test]
    fn garbage_values_encode_as_zero_not_panic() {
        let p = profile_of(&[
            ("content-length", "-5"),
            ("x-sessions", "NaN"),
            ("x-geo", "\u{1F600}"),
            (":path", ""),
            ("x-user-id", ""),
        ]);
        assert_eq!(p.vector, [0.0; INPUT_DIM]);
        let p = profile_of(&[("x-sessions", "1e30")]);
        assert_eq!(p.vector[16], 1.0, "clamped to 1");
    }

    #[test]
    fn devices_are_classified() {
        let cases = [
            ("Googlebot/2.1 (+http://www.google.com/bot.html) Mobile", Device::Bot),
            ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)", Device::Tablet),
            ("Mozilla/5.0 (Linux; Android 14; SM-X710)", Device::Tablet),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile Safari", Device::Mobile),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", Device::Desktop),
            ("curl/8.0", Device::Unknown),
            ("MOZILLA/5.0 (IPHONE; CPU IPHONE OS 17_4)", Device::Mobile),
            ("x", Device::Unknown),
            ("", Device::Unknown),
            ("some-client/1.0 crawl", Device::Bot),
            ("é€ unicode before Tablet", Device::Tablet),
        ];
        for (ua, want) in cases {
            assert_eq!(classify_device(Some(ua)), want, "{ua}");
        }
        assert_eq!(classify_device(None), Device::Unknown);
        // Only the first UA_SCAN bytes count: a token past them is not seen.
        let long = format!("{}Windows", "a".repeat(UA_SCAN - 7));
        assert_eq!(classify_device(Some(&long)), Device::Desktop);
        let too_long = format!("{}Windows", "a".repeat(UA_SCAN - 6));
        assert_eq!(classify_device(Some(&too_long)), Device::Unknown);
    }
}

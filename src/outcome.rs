//! Outcome: what augur learns about a request from its response, and the one
//! definition of a bad one — read by the stats (per stack, per feature arm)
//! and by automated rollback (its KPIs).

use crate::rollback;
use crate::routing::Stack;

/// Response status classes: 1xx..5xx, then "other" for anything unparsable.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// What augur learns about a request from its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub stack: Stack,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The app reported an engagement (`<prefix>engagement` response header).
    pub engaged: bool,
    /// The app reported a security event (`<prefix>security` response header).
    pub security: bool,
    /// Features on for this request / held out for this request (bitmasks).
    pub enabled: u64,
    pub holdout: u64,
    /// Features whose on/off state was random (holdout or exploration draw),
    /// and the segments the request was in (bitmasks).
    pub randomised: u64,
    pub segments: u64,
}

impl Outcome {
    /// Index into [`CLASSES`].
    pub fn class(&self) -> usize {
        match self.status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => CLASSES.len() - 1,
        }
    }

    /// 5xx, or no valid status at all (reset, timeout).
    pub fn is_error(&self) -> bool {
        !matches!(self.status, Some(100..=499))
    }

    /// Slower than the slow cut `cut_ms` (strictly, as the rollback judges a
    /// response: its cut is `Blocks::slow_ms`, the control requests' learned
    /// p90 within `rollback.slow_floor_ms`..`rollback.slow_ms`).
    pub fn is_slow(&self, cut_ms: u64) -> bool {
        self.latency_ms > cut_ms
    }

    /// The response's rollback KPIs (the slow cut is the rollback's own).
    pub fn kpis(&self) -> rollback::Outcome {
        rollback::Outcome { error: self.is_error(), security: self.security, latency_ms: self.latency_ms }
    }

    /// The app signals as one token for the access log; `None` when the app
    /// reported none (most responses: no filter-state object is made for them,
    /// ~3-4 µs of Envoy CPU per request, and the access log prints `-`).
    pub fn signals(&self) -> Option<&'static str> {
        match (self.engaged, self.security) {
            (false, false) => None,
            (true, false) => Some("engaged"),
            (false, true) => Some("security"),
            (true, true) => Some("engaged+security"),
        }
    }
}

/// An app signal header is set when its value is `1`, `true`, `yes` or a
/// positive number (e.g. a conversion value).
pub fn signal(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None => false,
        Some(v) => {
            v.eq_ignore_ascii_case("true")
                || v.eq_ignore_ascii_case("yes")
                || v.parse::<f64>().is_ok_and(|x| x > 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_values() {
        for (v, want) in [
            ("1", true),
            ("true", true),
            ("YES", true),
            ("12.5", true),
            ("0", false),
            ("no", false),
            ("", false),
        ] {
            assert_eq!(signal(Some(v)), want, "{v}");
        }
        assert!(!signal(None));
    }
}

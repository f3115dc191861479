//! Routing: old or new stack, sticky per user.
//!
//! The bucket is a stable hash of `salt` and the user id, so the same user lands in
//! the same bucket on every request, worker and restart (the flagd/Unleash
//! approach). A user is on the new stack when `bucket < percentage × 10 000`:
//! raising the percentage only ever moves users from old to new, never back.
//! Changing the salt reshuffles everyone — use a new salt per rollout.

use crate::config::{is_token, ConfigError, Field};
use crate::hash::stable_hash;
use crate::segments::{self, Segment};

/// Number of buckets: percentages resolve to 1/10 000 of a percent.
pub const BUCKETS: u32 = 1_000_000;

/// The two stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stack {
    Old,
    New,
}

impl Stack {
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Old => "old",
            Stack::New => "new",
        }
    }
}

/// What to do with requests that carry no user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAbsent {
    /// Anonymous requests stay on the old stack (stable, the safe default).
    #[default]
    Old,
    /// Anonymous requests are bucketed by a per-request random draw of
    /// augur's own (not the client's `x-request-id`): split by the
    /// percentage, but not sticky (each request rolls again).
    PerRequest,
}

/// A percentage (0-100) as a bucket threshold.
pub fn threshold(percentage: f64) -> u32 {
    (percentage.clamp(0.0, 100.0) * f64::from(BUCKETS) / 100.0).round() as u32
}

/// The compiled rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// `percentage × 10 000`, in `0..=BUCKETS`.
    pub threshold: u32,
    pub salt: String,
    pub when_absent: WhenAbsent,
}

impl Rollout {
    pub fn new(percentage: f64, salt: &str, when_absent: WhenAbsent) -> Rollout {
        Rollout { threshold: threshold(percentage), salt: salt.to_string(), when_absent }
    }

    /// The user's bucket in `0..BUCKETS`.
    pub fn bucket(&self, key: &str) -> u32 {
        self.bucket_of(key.as_bytes())
    }

    /// [`Rollout::bucket`] of raw bytes (a user id need not be UTF-8).
    pub fn bucket_of(&self, key: &[u8]) -> u32 {
        (stable_hash(&[self.salt.as_bytes(), key]) % u64::from(BUCKETS)) as u32
    }

    /// Chooses the stack. Returns the bucket used, if any. `draw` is the
    /// request's own random key (never anything the client sent): what an
    /// anonymous request is bucketed by under `when_absent: per_request`.
    pub fn choose(&self, user: Option<&str>, draw: Option<&str>) -> (Stack, Option<u32>) {
        self.choose_with(self.threshold, user.map(str::as_bytes), draw.map(str::as_bytes))
    }

    /// [`Rollout::choose`] with another threshold (a per-segment percentage):
    /// the same bucket, so raising a group's percentage only moves users forward.
    pub fn choose_with(
        &self,
        threshold: u32,
        user: Option<&[u8]>,
        draw: Option<&[u8]>,
    ) -> (Stack, Option<u32>) {
        let key = match (user.filter(|u| !u.is_empty()), self.when_absent) {
            (Some(u), _) => u,
            (None, WhenAbsent::PerRequest) => match draw {
                Some(id) => id,
                None => return (Stack::Old, None),
            },
            (None, WhenAbsent::Old) => return (Stack::Old, None),
        };
        let b = self.bucket_of(key);
        (if b < threshold { Stack::New } else { Stack::Old }, Some(b))
    }
}

/// `rollout` in the plugin configuration.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    pub(crate) percentage: f64,
    #[serde(default)]
    by_segment: Vec<RawSegmentRollout>,
    #[serde(default = "default_salt")]
    pub(crate) salt: String,
    #[serde(default)]
    when_absent: WhenAbsent,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmentRollout {
    segment: String,
    percentage: f64,
}

fn default_salt() -> String {
    "augur".into()
}

/// `stacks` in the plugin configuration: the routing-header values.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStacks {
    pub(crate) old: String,
    pub(crate) new: String,
}

impl Default for RawStacks {
    fn default() -> Self {
        RawStacks { old: "old".into(), new: "new".into() }
    }
}

fn percentage(field: String, pct: f64) -> Result<f64, ConfigError> {
    if (0.0..=100.0).contains(&pct) {
        Ok(pct)
    } else {
        Err(ConfigError::new(field, format!("{pct} is outside 0-100")))
    }
}

/// Compiles the split of `rollout`.
pub(crate) fn compile(raw: &RawRollout) -> Result<Rollout, ConfigError> {
    let pct = percentage("rollout.percentage".into(), raw.percentage)?;
    if raw.salt.is_empty() {
        return Err(ConfigError::new("rollout.salt", "must not be empty (use a new salt per rollout)"));
    }
    Ok(Rollout::new(pct, &raw.salt, raw.when_absent))
}

/// Compiles `rollout.by_segment`: per-segment thresholds (segment index,
/// buckets; first match wins).
pub(crate) fn compile_by_segment(
    raw: &RawRollout,
    segments: &[Segment],
) -> Result<Vec<(usize, u32)>, ConfigError> {
    let mut by_segment = Vec::with_capacity(raw.by_segment.len());
    for (i, r) in raw.by_segment.iter().enumerate() {
        let field = Field::item("rollout.by_segment", i);
        let ix = segments::resolve(field.child("segment"), &r.segment, segments)?;
        by_segment.push((ix, threshold(percentage(field.child("percentage").into(), r.percentage)?)));
    }
    Ok(by_segment)
}

/// Checks `stacks`: two different header values the route table matches.
pub(crate) fn check_stacks(raw: &RawStacks) -> Result<(), ConfigError> {
    for (field, v) in [("stacks.old", &raw.old), ("stacks.new", &raw.new)] {
        if !is_token(v) {
            return Err(ConfigError::new(field, format!("\"{v}\" must be a non-empty lowercase token (it is a header value the route table matches)")));
        }
    }
    if raw.old == raw.new {
        return Err(ConfigError::new("stacks.new", "must differ from stacks.old"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tracks_percentage_and_is_sticky() {
        for pct in [0.0, 0.5, 10.0, 37.5, 100.0] {
            let r = Rollout::new(pct, "s1", WhenAbsent::Old);
            let users: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
            let new = users.iter().filter(|u| r.choose(Some(u), None).0 == Stack::New).count();
            let share = 100.0 * new as f64 / users.len() as f64;
            assert!((share - pct).abs() < 1.0, "pct {pct}: got {share}");
            for u in users.iter().take(200) {
                assert_eq!(r.choose(Some(u), None), r.choose(Some(u), Some("x")));
            }
        }
    }

    #[test]
    fn raising_percentage_only_moves_users_to_new() {
        let lo = Rollout::new(10.0, "s", WhenAbsent::Old);
        let hi = Rollout::new(30.0, "s", WhenAbsent::Old);
        for i in 0..5000 {
            let u = format!("u{i}");
            if lo.choose(Some(&u), None).0 == Stack::New {
                assert_eq!(hi.choose(Some(&u), None).0, Stack::New);
            }
        }
    }

    #[test]
    fn salt_reshuffles() {
        let a = Rollout::new(50.0, "a", WhenAbsent::Old);
        let b = Rollout::new(50.0, "b", WhenAbsent::Old);
        let differ = (0..1000).filter(|i| a.bucket(&format!("u{i}")) != b.bucket(&format!("u{i}"))).count();
        assert!(differ > 990);
    }

    #[test]
    fn anonymous_requests_follow_policy() {
        let old = Rollout::new(100.0, "s", WhenAbsent::Old);
        assert_eq!(old.choose(None, Some("req-1")), (Stack::Old, None));
        assert_eq!(old.choose(Some(""), Some("req-1")), (Stack::Old, None));
        let per = Rollout::new(100.0, "s", WhenAbsent::PerRequest);
        assert_eq!(per.choose(None, Some("req-1")).0, Stack::New);
        assert_eq!(per.choose(None, None), (Stack::Old, None));
    }

    #[test]
    fn buckets_are_pinned_across_releases() {
        // Changing the hash would move live users between stacks: pin it.
        let r = Rollout::new(50.0, "augur", WhenAbsent::Old);
        assert_eq!(r.bucket("user-1"), PINNED_USER_1);
    }

    const PINNED_USER_1: u32 = 931_032;

    #[test]
    fn rollout_section_is_checked() {
        use crate::testing::TestConfig;
        let err = |c: TestConfig| c.compile().unwrap_err().to_string();
        let e = err(TestConfig::rollout(101.0).on("a"));
        assert_eq!(e, "rollout.percentage: 101 is outside 0-100");
        let e = err(TestConfig::rollout(0.0)
            .set("rollout.by_segment", serde_json::json!([{"segment": "ghost", "percentage": 5}]))
            .on("a"));
        assert!(e.starts_with("rollout.by_segment[0].segment: unknown segment \"ghost\""), "{e}");
        let e = err(TestConfig::rollout(5.0).on("a").set("stacks.new", "old"));
        assert_eq!(e, "stacks.new: must differ from stacks.old");
    }
}

//! Control headers: the headers augur owns. Clients must never send them (they
//! would choose their own stack or features), so every one is stripped on the
//! way in and on the way out; augur writes its own.
//!
//! Owns the `control_header_prefix` / `previous_control_header_prefixes` /
//! `upstream_headers` section of the configuration, the check that no header
//! augur *reads* is a control header, and the check that a push does not move
//! the prefix without a migration.

use crate::config::{is_token, ConfigError, Field};

/// Most earlier control-header prefixes a migration may keep stripping.
pub const MAX_PREVIOUS_PREFIXES: usize = 4;

pub(crate) fn default_prefix() -> String {
    "x-augur-".into()
}

/// Names of the headers the filter writes (and strips from clients).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlHeaders {
    /// Every incoming header starting with this prefix is removed, and so is
    /// every look-alike with `_` for `-` (`x_augur_stack`).
    pub prefix: String,
    /// Earlier prefixes of a migration (`previous_control_header_prefixes`):
    /// stripped like `prefix`.
    pub previous: Vec<String>,
    /// `<previous>stack` for each earlier prefix: written with the same value
    /// as `stack`, so a route table still matching the old name keeps working.
    pub previous_stack: Vec<String>,
    /// `<prefix>stack`: the stack name, matched by Envoy's route table.
    pub stack: String,
    /// `<prefix>features`: enabled features, comma-separated (new stack only).
    pub features: String,
    /// `<prefix>decision`: the decision id (new stack only).
    pub decision: String,
    /// `<prefix>flags`: every feature's state, reason and score, and the model
    /// version (new stack only; see [`crate::record::write_flags`]).
    pub flags: String,
    /// `<prefix>engagement`: response header the app sets on an engagement.
    pub engagement: String,
    /// `<prefix>security`: response header the app sets on a security event.
    pub security: String,
    /// Which of `features`, `flags`, `decision` go upstream (`upstream_headers`).
    pub send: Upstream,
}

/// The new-stack headers augur writes for the app (`upstream_headers`): each
/// is one more call into Envoy per request (~5.7k Envoy instructions), so an
/// app that reads only one of them can drop the others. The stack header is
/// always written (the route table needs it); every control header is
/// stripped from clients whether augur writes it or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub features: bool,
    pub flags: bool,
    pub decision: bool,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream { features: true, flags: true, decision: true }
    }
}

/// The names `upstream_headers` accepts, in the default order.
pub const UPSTREAM_HEADERS: [&str; 3] = ["features", "flags", "decision"];

pub(crate) fn default_upstream() -> Vec<String> {
    UPSTREAM_HEADERS.iter().map(|h| h.to_string()).collect()
}

/// Compiles `upstream_headers`: a list of [`UPSTREAM_HEADERS`] names.
pub(crate) fn compile_upstream(names: &[String]) -> Result<Upstream, ConfigError> {
    let mut send = Upstream { features: false, flags: false, decision: false };
    for (i, name) in names.iter().enumerate() {
        match name.trim() {
            "features" => send.features = true,
            "flags" => send.flags = true,
            "decision" => send.decision = true,
            other => {
                let [a, b, c] = UPSTREAM_HEADERS;
                return Err(ConfigError::new(
                    Field::item("upstream_headers", i),
                    format!(
                        "\"{other}\" is not a header augur writes for the app; use \"{a}\", \"{b}\" or \"{c}\" (the stack header is always written)"
                    ),
                ));
            }
        }
    }
    Ok(send)
}

impl ControlHeaders {
    /// The header names for `prefix` (lowercase, ending in '-'), plus the
    /// earlier prefixes of a migration.
    pub fn new(prefix: &str, previous: Vec<String>) -> ControlHeaders {
        ControlHeaders {
            stack: format!("{prefix}stack"),
            features: format!("{prefix}features"),
            decision: format!("{prefix}decision"),
            flags: format!("{prefix}flags"),
            engagement: format!("{prefix}engagement"),
            security: format!("{prefix}security"),
            previous_stack: previous.iter().map(|p| format!("{p}stack")).collect(),
            previous,
            prefix: prefix.to_string(),
            send: Upstream::default(),
        }
    }

    /// Compiles the prefix section: `prefix` and the earlier prefixes of a migration.
    pub(crate) fn compile(prefix: &str, previous: &[String]) -> Result<ControlHeaders, ConfigError> {
        let norm = |p: &str| p.trim().to_ascii_lowercase();
        let valid = |p: &str| is_token(p) && p.ends_with('-');
        let must = |p: &str| {
            format!("\"{p}\" must be a lowercase header-name prefix ending in '-', e.g. \"x-augur-\"")
        };
        let normalised = norm(prefix);
        if !valid(&normalised) {
            return Err(ConfigError::new("control_header_prefix", must(prefix)));
        }
        if previous.len() > MAX_PREVIOUS_PREFIXES {
            return Err(ConfigError::new(
                "previous_control_header_prefixes",
                format!("at most {MAX_PREVIOUS_PREFIXES} earlier prefixes; drop those no route table matches any more"),
            ));
        }
        let mut out = Vec::with_capacity(previous.len());
        for (i, p) in previous.iter().enumerate() {
            let field = Field::item("previous_control_header_prefixes", i);
            let p = norm(p);
            if !valid(&p) {
                return Err(ConfigError::new(field, must(&p)));
            }
            if p == normalised {
                return Err(ConfigError::new(
                    field,
                    format!("\"{p}\" is control_header_prefix itself; list only earlier prefixes"),
                ));
            }
            out.push(p);
        }
        Ok(ControlHeaders::new(&normalised, out))
    }

    /// Whether `name` (lowercase) is a control header a client must not send:
    /// it starts with the prefix or an earlier one, where any `-` of the
    /// prefix may also be `_` (frameworks that fold `_` into `-` — CGI,
    /// Django, Rails — would read `x_augur_stack` as `x-augur-stack`).
    pub fn is_control(&self, name: &str) -> bool {
        starts_with_folded(name, &self.prefix) || self.previous.iter().any(|p| starts_with_folded(name, p))
    }

    /// A header augur reads (`field` of the configuration), lowercased: refused
    /// when it is not a header name or is a control header, which would be
    /// stripped before it is read.
    pub(crate) fn input_header(&self, field: &str, raw: &str) -> Result<String, ConfigError> {
        let h = raw.trim().to_ascii_lowercase();
        if !is_token(&h) {
            return Err(ConfigError::new(field, format!("\"{raw}\" is not a valid header name")));
        }
        if self.is_control(&h) {
            return Err(ConfigError::new(
                field,
                format!(
                    "\"{h}\" starts with control_header_prefix \"{}\" (or an earlier or '_' form of it) and would be stripped; pick another header",
                    self.prefix
                ),
            ));
        }
        Ok(h)
    }
}

fn starts_with_folded(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.bytes().zip(prefix.bytes()).all(|(n, p)| n == p || (p == b'-' && n == b'_'))
}

/// Refuses a pushed configuration that changes `control_header_prefix` from
/// `previous` (the one last accepted for the same rollout) without a
/// migration: the route table would still match `<previous>stack`, which
/// augur would no longer strip, so clients could choose their stack again.
pub fn check_prefix_change(previous: &str, next: &ControlHeaders) -> Result<(), ConfigError> {
    if previous == next.prefix || next.previous.iter().any(|p| p == previous) {
        return Ok(());
    }
    Err(ConfigError::new(
        "control_header_prefix",
        format!(
            "changes from \"{previous}\" to \"{new}\" without a migration: the route table still matches \"{previous}stack\", which clients could then send to choose their stack; add \"previous_control_header_prefixes\": [\"{previous}\"] (both prefixes are stripped and the stack header is written under both) and move the route table to \"{new}stack\" (check with `augur check-config --envoy`), or keep \"{previous}\"",
            new = next.prefix
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestConfig;

    fn err(c: TestConfig) -> String {
        c.compile().unwrap_err().to_string()
    }

    #[test]
    fn control_headers_cover_underscore_look_alikes_and_earlier_prefixes() {
        let h = ControlHeaders::new("x-ctl-", vec!["x-augur-".into()]);
        for name in ["x-ctl-stack", "x_ctl_stack", "x-ctl_x", "x_ctl-", "x-augur-stack", "x_augur_features"] {
            assert!(h.is_control(name), "{name}");
        }
        for name in ["x-ctl", "x-ct-stack", "x-user-id", "x_user_id", "", "y-ctl-stack"] {
            assert!(!h.is_control(name), "{name}");
        }
        assert_eq!(h.previous_stack, ["x-augur-stack"]);
    }

    #[test]
    fn control_prefix_headers_cannot_be_inputs() {
        let e = err(TestConfig::rollout(5.0).on("a").set("profile.user_header", "x-augur-user"));
        assert!(
            e.starts_with("profile.user_header: \"x-augur-user\" starts with control_header_prefix"),
            "{e}"
        );
    }

    #[test]
    fn a_prefix_change_needs_the_old_prefix_listed() {
        let base = || TestConfig::rollout(5.0).on("a");
        let moved = base().set("control_header_prefix", "x-ctl-").compile().unwrap();
        let e = check_prefix_change("x-augur-", &moved.headers).unwrap_err().to_string();
        assert!(
            e.starts_with(
                r#"control_header_prefix: changes from "x-augur-" to "x-ctl-" without a migration"#
            ),
            "{e}"
        );
        assert!(e.contains(r#""previous_control_header_prefixes": ["x-augur-"]"#), "{e}");
        assert!(check_prefix_change("x-ctl-", &moved.headers).is_ok());
        let migrating = base()
            .set("control_header_prefix", "x-ctl-")
            .set("previous_control_header_prefixes", serde_json::json!(["X-Augur-"]))
            .compile()
            .unwrap();
        assert!(check_prefix_change("x-augur-", &migrating.headers).is_ok());
        assert!(check_prefix_change("x-other-", &migrating.headers).is_err());
        let e = err(base().set("previous_control_header_prefixes", serde_json::json!(["x-augur-"])));
        assert!(
            e.starts_with(
                "previous_control_header_prefixes[0]: \"x-augur-\" is control_header_prefix itself"
            ),
            "{e}"
        );
        let e = err(base().set("previous_control_header_prefixes", serde_json::json!(["nodash"])));
        assert!(e.starts_with("previous_control_header_prefixes[0]: \"nodash\" must be"), "{e}");
        let e = err(base()
            .set("control_header_prefix", "x-ctl-")
            .set("previous_control_header_prefixes", serde_json::json!(["x-augur-"]))
            .set("profile.user_header", "x_augur_user"));
        assert!(
            e.starts_with("profile.user_header: \"x_augur_user\" starts with control_header_prefix"),
            "{e}"
        );
    }
}

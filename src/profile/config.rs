//! The `profile` section: which headers the profile reads, and the locations,
//! path classes and history signals its slots stand for.

use serde::Deserialize;

use super::{HistorySignal, ProfileSpec, MAX_HISTORY, MAX_LOCATIONS, MAX_PATH_CLASSES};
use crate::config::ConfigError;
use crate::control::ControlHeaders;

/// `profile` in the plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawProfile {
    user_header: String,
    location_header: String,
    locations: Vec<String>,
    path_classes: Vec<String>,
    history: Vec<RawHistory>,
}

impl Default for RawProfile {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        RawProfile {
            user_header: "x-user-id".into(),
            location_header: "x-geo-region".into(),
            locations: s(&["us", "eu", "apac", "latam"]),
            path_classes: s(&["/api/checkout", "/api/search", "/api", "/static"]),
            history: [
                ("x-user-sessions-30d", 50.0),
                ("x-user-purchases-90d", 20.0),
                ("x-user-tenure-days", 365.0),
                ("x-user-errors-7d", 10.0),
            ]
            .iter()
            .map(|(h, m)| RawHistory { header: h.to_string(), max: *m })
            .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    header: String,
    max: f32,
}

/// Compiles `profile`; no header it reads may be a control header.
pub(crate) fn compile(raw: &RawProfile, control: &ControlHeaders) -> Result<ProfileSpec, ConfigError> {
    let user_header = control.input_header("profile.user_header", &raw.user_header)?;
    let location_header = control.input_header("profile.location_header", &raw.location_header)?;
    let at_most = |field: &str, len: usize, max: usize, what: &str| {
        if len > max {
            Err(ConfigError::new(field, format!("at most {max} {what} (one model input slot each)")))
        } else {
            Ok(())
        }
    };
    at_most("profile.locations", raw.locations.len(), MAX_LOCATIONS, "locations")?;
    at_most("profile.path_classes", raw.path_classes.len(), MAX_PATH_CLASSES, "path classes")?;
    for (i, p) in raw.path_classes.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                format!("profile.path_classes[{i}]"),
                format!("\"{p}\" must be a path prefix starting with '/'"),
            ));
        }
    }
    at_most("profile.history", raw.history.len(), MAX_HISTORY, "history signals")?;
    let mut history = Vec::with_capacity(raw.history.len());
    for (i, h) in raw.history.iter().enumerate() {
        let header = control.input_header(&format!("profile.history[{i}].header"), &h.header)?;
        if !(h.max.is_finite() && h.max > 0.0) {
            return Err(ConfigError::new(
                format!("profile.history[{i}].max"),
                "must be a positive number (the value that encodes as 1.0)",
            ));
        }
        history.push(HistorySignal { header, max: h.max });
    }
    Ok(ProfileSpec {
        user_header,
        location_header,
        locations: raw.locations.iter().map(|l| l.trim().to_ascii_lowercase()).collect(),
        path_classes: raw.path_classes.clone(),
        history,
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::TestConfig;

    #[test]
    fn profile_limits_name_the_field() {
        let e = TestConfig::rollout(5.0)
            .on("a")
            .set("profile.path_classes", serde_json::json!(["api"]))
            .compile()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "profile.path_classes[0]: \"api\" must be a path prefix starting with '/'");
        let e = TestConfig::rollout(5.0)
            .on("a")
            .set("profile.locations", serde_json::json!(["a", "b", "c", "d", "e"]))
            .compile()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "profile.locations: at most 4 locations (one model input slot each)");
    }
}

//! Engine: the whole per-request decision — profile → model → flags → routing —
//! as one pure function over a compiled [`Config`] and a request's headers.
//!
//! Fail-open: if the model fails on a request (or no run state could be made),
//! the request still gets a stack, every feature takes its configured `fallback`,
//! and [`Decision::model_ok`] is false so the filter counts it.

use crate::config::Config;
use crate::flags::{FlagDecision, Reason};
use crate::headers::Headers;
use crate::model::{Impact, Session};
use crate::profile::{self, Profile};
use crate::routing::Stack;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub stack: Stack,
    /// The user's rollout bucket (`0..routing::BUCKETS`), when one was computed.
    pub bucket: Option<u32>,
    pub profile: Profile,
    /// False when the model could not score this request (fallbacks applied).
    pub model_ok: bool,
    /// One entry per configured feature, in configuration order.
    pub flags: Vec<FlagDecision>,
}

impl Default for Decision {
    fn default() -> Self {
        Decision {
            stack: Stack::Old,
            bucket: None,
            profile: Profile::default(),
            model_ok: false,
            flags: Vec::new(),
        }
    }
}

impl Decision {
    /// Names of the features that are on, in configuration order.
    pub fn enabled<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = &'a str> + 'a {
        config.feature_names().zip(&self.flags).filter(|(_, d)| d.on).map(|(n, _)| n)
    }
}

/// Per-worker state: the model run state and scratch buffers, reused across
/// requests so the hot path does not rebuild plans or reallocate.
pub struct Worker {
    session: Option<Session>,
    impacts: Vec<Impact>,
}

impl Worker {
    /// Makes a worker for `config`. A model whose run state cannot be created
    /// leaves the worker unscored (every request uses fallbacks) rather than
    /// failing the configuration, which was already validated.
    pub fn new(config: &Config) -> Worker {
        Worker {
            session: config.model.session().ok(),
            impacts: Vec::with_capacity(config.model.features().len()),
        }
    }
}

/// Decides one request into `out` (reusing its allocations).
pub fn decide(config: &Config, worker: &mut Worker, req: &(impl Headers + ?Sized), out: &mut Decision) {
    profile::encode(&config.profile, &config.segments, req, &mut out.profile);

    (out.stack, out.bucket) = if config.global_off {
        (Stack::Old, None)
    } else {
        let user = req.header(&config.profile.user_header);
        config.rollout.choose(user, req.header("x-request-id"))
    };

    out.model_ok = match worker.session.as_mut() {
        Some(s) => s.predict(&out.profile.vector, &mut worker.impacts).is_ok(),
        None => false,
    };
    let impacts = out.model_ok.then_some(worker.impacts.as_slice());
    config.rules.decide(config.global_off, impacts, out.profile.segments, &mut out.flags);

    if out.stack == Stack::Old && !config.global_off {
        for f in out.flags.iter_mut() {
            f.on = false;
            f.reason = Reason::OldStack;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile;

    fn config(pct: f64, extra: &str) -> Config {
        let json = format!(
            r#"{{"rollout": {{"percentage": {pct}}}, {extra}
                "features": [{{"name": "new_checkout", "override": "on"}},
                             {{"name": "one_click_pay", "override": "on", "requires": ["new_checkout"]}}]}}"#
        );
        compile(json.as_bytes()).unwrap()
    }

    fn headers(user: &str) -> Vec<(String, String)> {
        vec![("x-user-id".into(), user.into()), (":path".into(), "/api/checkout".into())]
    }

    #[test]
    fn new_stack_gets_features_old_stack_gets_none() {
        let c = config(50.0, "");
        let mut w = Worker::new(&c);
        let mut seen = [false, false];
        for i in 0..200 {
            let mut d = Decision::default();
            decide(&c, &mut w, &headers(&format!("u{i}")), &mut d);
            assert!(d.model_ok);
            assert_eq!(d.flags.len(), 2);
            match d.stack {
                Stack::New => {
                    seen[0] = true;
                    assert_eq!(d.enabled(&c).collect::<Vec<_>>(), ["new_checkout", "one_click_pay"]);
                }
                Stack::Old => {
                    seen[1] = true;
                    assert!(d.flags.iter().all(|f| !f.on && f.reason == Reason::OldStack));
                }
            }
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn global_off_sends_everyone_old_with_no_features() {
        let c = config(100.0, r#""override": "off","#);
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        decide(&c, &mut w, &headers("u1"), &mut d);
        assert_eq!(d.stack, Stack::Old);
        assert!(d.flags.iter().all(|f| !f.on && f.reason == Reason::GlobalOff));
    }

    #[test]
    fn anonymous_user_stays_on_old_stack_by_default() {
        let c = config(100.0, "");
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        decide(&c, &mut w, &vec![("x-request-id".to_string(), "r1".to_string())], &mut d);
        assert_eq!((d.stack, d.bucket), (Stack::Old, None));
    }
}

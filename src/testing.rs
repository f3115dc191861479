//! Test configurations as code: one builder for the unit tests, the contract
//! tests in `tests/` and the benches, instead of hand-written JSON per test.
//! It writes the same JSON an operator would push and compiles it through
//! [`crate::config::compile`], so every test still goes through the parser.

use serde_json::{json, Map, Value};

use crate::config::{compile, compile_with_model, Config, ConfigError};

/// A plugin configuration under construction (the JSON value it will push).
#[derive(Debug, Clone)]
pub struct TestConfig(Value);

impl TestConfig {
    /// `{"rollout": {"percentage": p}, "features": []}`: add features next.
    pub fn rollout(percentage: f64) -> TestConfig {
        TestConfig(json!({"rollout": {"percentage": percentage}, "features": []}))
    }

    /// A feature with these fields besides its name (`json!({})` for defaults).
    pub fn feature(mut self, name: &str, fields: Value) -> TestConfig {
        push(&mut self.0, "features", named(name, fields));
        self
    }

    /// A feature with `override: on` (decided without the model).
    pub fn on(self, name: &str) -> TestConfig {
        self.feature(name, json!({"override": "on"}))
    }

    /// A feature with `override: off` (the kill switch).
    pub fn off(self, name: &str) -> TestConfig {
        self.feature(name, json!({"override": "off"}))
    }

    /// An `auto` feature no prediction turns off: on wherever the model scores it.
    pub fn permissive(self, name: &str) -> TestConfig {
        self.feature(
            name,
            json!({"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}),
        )
    }

    /// A segment with these criteria besides its name.
    pub fn segment(mut self, name: &str, criteria: Value) -> TestConfig {
        push(&mut self.0, "segments", named(name, criteria));
        self
    }

    /// Sets the field at a dotted path (`"rollback.sync_ms"`), making the
    /// objects on the way.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> TestConfig {
        let mut at = &mut self.0;
        for key in path.split('.') {
            if !at.is_object() {
                *at = Value::Object(Map::new());
            }
            let Value::Object(map) = at else { return self };
            at = map.entry(key.to_string()).or_insert(Value::Null);
        }
        *at = value.into();
        self
    }

    /// The JSON to push.
    pub fn json(&self) -> String {
        self.0.to_string()
    }

    /// Compiles it with the embedded default model.
    pub fn compile(&self) -> Result<Config, ConfigError> {
        compile(self.json().as_bytes())
    }

    /// Compiles it with `model` as the default model.
    pub fn compile_with_model(&self, model: &[u8]) -> Result<Config, ConfigError> {
        compile_with_model(self.json().as_bytes(), model)
    }
}

/// `{"name": name, ...fields}`.
fn named(name: &str, fields: Value) -> Value {
    let mut item = Map::new();
    item.insert("name".into(), name.into());
    if let Value::Object(more) = fields {
        item.extend(more);
    }
    Value::Object(item)
}

fn push(config: &mut Value, list: &str, item: Value) {
    if let Value::Object(map) = config {
        match map.entry(list.to_string()).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(item),
            other => *other = Value::Array(vec![item]),
        }
    }
}

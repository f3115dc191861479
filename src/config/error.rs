//! The one error type of configuration compiling, and the one spelling of
//! the JSON paths it names.

use std::fmt;

/// A refused configuration: which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, e.g. `features[2].requires`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// The error for `field` (a JSON path, `""` for the whole document).
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The JSON path of a field as validation descends into the document
/// (`features[2].requires[0]`): one spelling of paths in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field(String);

impl Field {
    /// Item `i` of the top-level list `list`: `list[i]`.
    pub(crate) fn item(list: &str, i: usize) -> Field {
        Field(format!("{list}[{i}]"))
    }

    /// The member `name` of this object: `self.name`.
    pub(crate) fn child(&self, name: &str) -> Field {
        Field(format!("{}.{name}", self.0))
    }

    /// Item `i` of this list: `self[i]`.
    pub(crate) fn at(&self, i: usize) -> Field {
        Field(format!("{}[{i}]", self.0))
    }
}

impl std::ops::Deref for Field {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<Field> for String {
    fn from(f: Field) -> String {
        f.0
    }
}

impl From<&Field> for String {
    fn from(f: &Field) -> String {
        f.0.clone()
    }
}

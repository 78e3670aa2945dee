//! Parameter parsing shared by every kind: a kind declares a serde struct
//! with `deny_unknown_fields`, and [`parse_params`] turns serde's words into
//! a [`ParamError`] that names the field, so `upshift check` can point at it.

use std::time::Duration;

use serde::de::DeserializeOwned;

/// A parameter is missing, unknown or of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// The field concerned, if known (for locating it in the plan).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ParamError {
    /// An error about one field.
    pub fn field(field: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            field: Some(field.to_string()),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> ParamError {
        self.hint = Some(hint.into());
        self
    }
}

/// Deserializes a kind's parameters from its `with` table.
pub fn parse_params<P: DeserializeOwned>(with: &toml::Table) -> Result<P, ParamError> {
    toml::Value::Table(with.clone())
        .try_into::<P>()
        .map_err(|e| {
            let message = e.to_string().trim().to_string();
            // serde names the field between backticks: "unknown field `x`",
            // "missing field `y`".
            let field = message
                .split('`')
                .nth(1)
                .filter(|f| !f.is_empty() && !f.contains(' '))
                .map(str::to_string);
            let hint = if message.starts_with("unknown field") {
                Some(
                    "check the spelling against the kind's parameters (README, \"Step kinds\")"
                        .to_string(),
                )
            } else if message.starts_with("missing field") {
                Some("add it under the step's [steps.<id>.with] table".to_string())
            } else {
                None
            };
            ParamError {
                field,
                message,
                hint,
            }
        })
}

/// Parses a duration such as `250ms`, `20s`, `30m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}); write e.g. \"250ms\", \"20s\", \"30m\", \"1h30m\""
        )
    })
}

/// serde helper: a duration written as text.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes `"30s"` into a [`Duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Optional variant.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        /// Deserializes an optional `"30s"`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| super::super::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

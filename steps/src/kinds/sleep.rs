//! `sleep`: waits for a duration. For plans that must let something settle,
//! and for tests (a chain of `sleep 0s` steps measures engine overhead).

use std::time::Duration;

use serde::Deserialize;

use super::KindFn;
use crate::{ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `sleep` kind.
pub const KIND: KindFn = KindFn {
    name: "sleep",
    summary: "wait for `duration` (e.g. \"20s\")",
    build,
    local_paths: &[],
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(with = "crate::params::duration_text")]
    duration: Duration,
}

struct Sleep {
    text: String,
    duration: Duration,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    Ok(Box::new(Sleep {
        text: humantime::format_duration(p.duration).to_string(),
        duration: p.duration,
    }))
}

#[async_trait::async_trait]
impl Step for Sleep {
    fn describe(&self) -> Vec<String> {
        vec![format!("sleep {}", self.text)]
    }
    async fn run(&self, _ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        if !self.duration.is_zero() {
            tokio::time::sleep(self.duration).await;
        }
        Ok(StepOutcome::default())
    }
}

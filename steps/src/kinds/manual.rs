//! `manual`: pauses the run until an operator approves the step (e.g. "bind
//! the HTTPS certificate to the FE site in IIS"). Other branches of the plan
//! go on; when nothing else can run, the engine exits with code 3 and says
//! which command continues.

use serde::Deserialize;

use super::KindFn;
use crate::{ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `manual` kind.
pub const KIND: KindFn = KindFn {
    name: "manual",
    summary: "wait until an operator runs `upshift approve RUN STEP`",
    build,
    local_paths: &[],
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// What the operator must do before approving.
    instructions: String,
}

struct Manual {
    instructions: String,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    Ok(Box::new(Manual {
        instructions: p.instructions,
    }))
}

#[async_trait::async_trait]
impl Step for Manual {
    fn describe(&self) -> Vec<String> {
        vec![format!("wait for an operator: {}", self.instructions)]
    }
    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        if ctx.approved() {
            ctx.output(&format!("approved by an operator: {}\n", self.instructions));
            Ok(StepOutcome::default())
        } else {
            Err(StepError::WaitForOperator {
                reason: self.instructions.clone(),
            })
        }
    }
}

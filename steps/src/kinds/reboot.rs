//! `reboot`: asks for a reboot before the run goes on (for a plan that
//! knows one is due, e.g. after a Windows update). The engine registers
//! upshift to resume the run at boot, then reboots or pauses per the plan's
//! `reboot` policy. The step itself succeeds once: after the boot it is done
//! and does not ask again.

use serde::Deserialize;

use super::KindFn;
use crate::{ParamError, Step, StepContext, StepError, StepOutcome, parse_params};

/// The `reboot` kind.
pub const KIND: KindFn = KindFn {
    name: "reboot",
    summary: "ask for a reboot; the run resumes at boot",
    build,
    local_paths: &[],
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Why, for the journal and the operator.
    #[serde(default)]
    reason: String,
}

struct Reboot {
    reason: String,
}

fn build(with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let p: Params = parse_params(with)?;
    Ok(Box::new(Reboot { reason: p.reason }))
}

#[async_trait::async_trait]
impl Step for Reboot {
    fn describe(&self) -> Vec<String> {
        vec![format!(
            "reboot the machine{} (the run resumes at boot)",
            if self.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", self.reason)
            }
        )]
    }
    async fn run(&self, ctx: &dyn StepContext) -> Result<StepOutcome, StepError> {
        ctx.output(&format!("reboot requested: {}\n", self.reason));
        Ok(StepOutcome {
            outputs: Default::default(),
            reboot_required: true,
        })
    }
}

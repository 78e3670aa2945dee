//! A [`StepContext`] for tests of step kinds without the engine: keeps
//! checkpoints, progress and output in memory.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::{Outputs, StepContext, StepError};

/// An in-memory context. Checkpoints are "durable" the moment they are kept.
#[derive(Default)]
pub struct TestContext {
    /// Step id reported to the step.
    pub step: String,
    /// Attempt reported to the step.
    pub attempt: u32,
    /// What `resume_from` returns.
    pub resume: Option<Vec<u8>>,
    /// Whether the step counts as approved.
    pub approved: bool,
    /// Outputs recorded earlier (for compensation).
    pub recorded: Outputs,
    /// The work folder handed to the step.
    pub work_dir: PathBuf,
    /// Checkpoints saved, in order: (data, done, total).
    pub checkpoints: Mutex<Vec<(Vec<u8>, u64, u64)>>,
    /// Progress reports, in order: (done, total, message).
    pub progress: Mutex<Vec<(u64, u64, String)>>,
    /// Captured output.
    pub output: Mutex<String>,
    /// Fail the n-th checkpoint (1-based) to simulate a crash there.
    pub fail_checkpoint_at: Option<usize>,
}

impl TestContext {
    /// A context for step `step`, attempt 1, working in `work_dir`.
    pub fn new(step: &str, work_dir: impl Into<PathBuf>) -> TestContext {
        TestContext {
            step: step.to_string(),
            attempt: 1,
            work_dir: work_dir.into(),
            ..TestContext::default()
        }
    }

    /// The captured output so far.
    pub fn output_text(&self) -> String {
        self.output.lock().expect("poisoned").clone()
    }

    /// The last checkpoint saved, if any.
    pub fn last_checkpoint(&self) -> Option<Vec<u8>> {
        self.checkpoints
            .lock()
            .expect("poisoned")
            .last()
            .map(|c| c.0.clone())
    }
}

#[async_trait::async_trait]
impl StepContext for TestContext {
    fn step_id(&self) -> &str {
        &self.step
    }
    fn run_id(&self) -> &str {
        "00000000-0000-0000-0000-000000000000"
    }
    fn attempt(&self) -> u32 {
        self.attempt
    }
    fn resume_from(&self) -> Option<Vec<u8>> {
        self.resume.clone()
    }
    async fn checkpoint(&self, data: Vec<u8>, done: u64, total: u64) -> Result<(), StepError> {
        let mut cps = self.checkpoints.lock().expect("poisoned");
        if self.fail_checkpoint_at == Some(cps.len() + 1) {
            return Err(StepError::fatal("simulated crash at checkpoint"));
        }
        cps.push((data, done, total));
        Ok(())
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        self.progress
            .lock()
            .expect("poisoned")
            .push((done, total, message.to_string()));
    }
    fn output(&self, text: &str) {
        self.output.lock().expect("poisoned").push_str(text);
    }
    fn approved(&self) -> bool {
        self.approved
    }
    fn recorded_outputs(&self) -> Outputs {
        self.recorded.clone()
    }
    fn work_dir(&self) -> PathBuf {
        self.work_dir.clone()
    }
}

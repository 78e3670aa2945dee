//! The coordinator itself as a host: commands are local processes, copies
//! are local file copies. Used for `transport = "local"` and by tests that
//! need the ticket contract without sshd.

use std::path::Path;

use super::{HostOs, RemoteChild, RemoteCommand, Transport, piped};
use crate::RemoteError;

/// Runs commands on this machine.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    host: String,
}

impl LocalTransport {
    /// A transport for the host named `host` in the plan.
    pub fn new(host: impl Into<String>) -> LocalTransport {
        LocalTransport { host: host.into() }
    }

    fn io(&self, what: String, e: std::io::Error) -> RemoteError {
        RemoteError::Io {
            host: self.host.clone(),
            what,
            detail: e.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.host
    }

    fn os(&self) -> HostOs {
        HostOs::current()
    }

    fn describe(&self) -> String {
        "local".to_string()
    }

    async fn connect(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    async fn spawn(&self, cmd: &RemoteCommand) -> Result<RemoteChild, RemoteError> {
        let child = piped(&cmd.program)
            .args(&cmd.args)
            .spawn()
            .map_err(|e| self.io(format!("cannot start {}", cmd.program), e))?;
        Ok(RemoteChild::from_child(child))
    }

    fn failure(&self, _code: i32, _stderr: &str) -> Option<RemoteError> {
        None
    }

    async fn copy_file(&self, local: &Path, remote: &str) -> Result<(), RemoteError> {
        let to = Path::new(remote).to_path_buf();
        let from = local.to_path_buf();
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = to.with_extension(format!("part-{}", std::process::id()));
            let copied = std::fs::copy(&from, &tmp)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &to));
            if copied.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            copied
        })
        .await
        .map_err(|e| RemoteError::Io {
            host: host.clone(),
            what: "copy".into(),
            detail: e.to_string(),
        })?
        .map_err(|e| self.io(format!("cannot copy {} to {remote}", local.display()), e))
    }
}

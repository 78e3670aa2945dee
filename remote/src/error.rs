//! The one error type of the crate. Every variant names the host; the ones
//! about keys and logins say what to do.

/// What went wrong talking to a host or with a ticket on it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteError {
    /// The host offered a key that is not in the known_hosts file.
    #[error(
        "host {host}: its host key is not in {known_hosts}, so nothing was run ({detail}). \
         Add the host's key to that file after checking its fingerprint on the host \
         itself (e.g. `ssh-keygen -lf` on the host's key); upshift never accepts an unknown key"
    )]
    HostKeyUnknown {
        /// Host name in the plan.
        host: String,
        /// The known_hosts file that was checked.
        known_hosts: String,
        /// What ssh said.
        detail: String,
    },
    /// The host offered a key that differs from the one on file.
    #[error(
        "host {host}: its host key CHANGED and does not match {known_hosts}, so nothing was run \
         ({detail}). If the host was reinstalled, check the new fingerprint on the host and \
         replace its line in that file; otherwise someone may be intercepting the connection"
    )]
    HostKeyChanged {
        /// Host name in the plan.
        host: String,
        /// The known_hosts file that was checked.
        known_hosts: String,
        /// What ssh said.
        detail: String,
    },
    /// The host refused the login.
    #[error(
        "host {host}: login refused for user {user} with key {identity} ({detail}). Is the \
         public key in that user's authorized_keys (on Windows, for administrators: \
         C:\\ProgramData\\ssh\\administrators_authorized_keys)?"
    )]
    AuthRefused {
        /// Host name in the plan.
        host: String,
        /// The user upshift logs in as.
        user: String,
        /// The private key file offered.
        identity: String,
        /// What ssh said.
        detail: String,
    },
    /// The host's configuration is unusable (a key file missing, a bad
    /// work folder).
    #[error("host {host}: {message}")]
    Config {
        /// Host name in the plan.
        host: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The host cannot be reached (refused, timed out, name unknown).
    /// Transient: a retry may work.
    #[error("host {host}: unreachable: {detail}")]
    Unreachable {
        /// Host name in the plan.
        host: String,
        /// What failed.
        detail: String,
    },
    /// An established connection was lost. Transient.
    #[error("host {host}: connection lost: {detail}")]
    Disconnected {
        /// Host name in the plan.
        host: String,
        /// What failed.
        detail: String,
    },
    /// The host did not answer a request in time. Transient.
    #[error("host {host}: no answer to `{what}` within {timeout_ms} ms")]
    Timeout {
        /// Host name in the plan.
        host: String,
        /// The request.
        what: String,
        /// How long upshift waited.
        timeout_ms: u64,
    },
    /// Reconnecting did not succeed within the allowed time.
    #[error(
        "host {host}: still unreachable after {waited_s} s of reconnecting; last error: {last}"
    )]
    GaveUp {
        /// Host name in the plan.
        host: String,
        /// Seconds spent reconnecting.
        waited_s: u64,
        /// The last error.
        last: String,
    },
    /// The upshift binary on the host does not start or answer.
    #[error("host {host}: the upshift runner does not start: {detail}")]
    RunnerWontStart {
        /// Host name in the plan.
        host: String,
        /// Exit code and what it printed.
        detail: String,
    },
    /// The host's runner answered something this coordinator does not
    /// understand (another version, a damaged stream).
    #[error("host {host}: protocol error: {message}")]
    Protocol {
        /// Host name in the plan.
        host: String,
        /// What was wrong.
        message: String,
    },
    /// A ticket cannot be used as asked (unknown, or reused for another step).
    #[error("host {host}: ticket {ticket}: {message}")]
    Ticket {
        /// Host name in the plan.
        host: String,
        /// The ticket id.
        ticket: String,
        /// What is wrong.
        message: String,
    },
    /// A reboot was asked for but the host did not come back with a new
    /// boot id in time.
    #[error("host {host}: reboot not confirmed: {detail}")]
    RebootNotConfirmed {
        /// Host name in the plan.
        host: String,
        /// What was seen.
        detail: String,
    },
    /// The host's runner does not know an operation (it is older than
    /// it). In practice the binary is replaced by the coordinator's own on
    /// connecting (it is content-addressed), so this is rare.
    #[error("host {host}: the host's upshift does not answer `{what}`: {detail}")]
    Unsupported {
        /// Host name in the plan.
        host: String,
        /// The operation.
        what: String,
        /// What the host said, or its version.
        detail: String,
    },
    /// A file operation on the host failed.
    #[error("host {host}: {what}: {detail}")]
    Io {
        /// Host name in the plan.
        host: String,
        /// What was being done.
        what: String,
        /// The OS error.
        detail: String,
    },
}

impl RemoteError {
    /// Whether reconnecting and asking again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Unreachable { .. }
                | RemoteError::Disconnected { .. }
                | RemoteError::Timeout { .. }
        )
    }

    /// The host the error is about.
    pub fn host(&self) -> &str {
        match self {
            RemoteError::HostKeyUnknown { host, .. }
            | RemoteError::HostKeyChanged { host, .. }
            | RemoteError::AuthRefused { host, .. }
            | RemoteError::Config { host, .. }
            | RemoteError::Unreachable { host, .. }
            | RemoteError::Disconnected { host, .. }
            | RemoteError::Timeout { host, .. }
            | RemoteError::GaveUp { host, .. }
            | RemoteError::RunnerWontStart { host, .. }
            | RemoteError::Protocol { host, .. }
            | RemoteError::Ticket { host, .. }
            | RemoteError::RebootNotConfirmed { host, .. }
            | RemoteError::Io { host, .. }
            | RemoteError::Unsupported { host, .. } => host,
        }
    }
}

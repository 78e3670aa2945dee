//! Who is running this command: the OS user and host, journaled with every
//! run session and operator decision.

use upshift_journal::Actor;

/// Who is running this command.
pub fn actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into());
    let host = hostname();
    Actor {
        user,
        host,
        pid: std::process::id(),
    }
}

fn os_user() -> Option<String> {
    #[cfg(unix)]
    {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into())
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
    }
}

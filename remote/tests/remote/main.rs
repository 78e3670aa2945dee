//! The remote step contract, end to end: the real runner binary (the stub
//! that stands in for `upshift`), started through the local transport and
//! through real OpenSSH `sshd` processes on loopback, with real kills.
//!
//! Unix only: the harness reads /proc and sends signals (the Windows code
//! paths are type-checked, see docs/remote.md).

#![cfg(unix)]

mod faults;
mod local;
mod preflight;
mod ssh;
mod support;

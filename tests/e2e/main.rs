//! End-to-end tests: the real `upshift` binary, real processes, real files,
//! real signals. One test binary; `support` holds the harness.

mod support;

mod check;
mod crash;
mod decision_fit;
mod demo;
mod hardening;
mod notify;
mod operator;
mod operator_paste;
mod owners;
#[cfg(feature = "demo")]
mod preflight;
mod preflight_ports;
mod processes;
mod read_only;
mod reboot_drift;
mod remote_hosts;
mod secrets;
mod sites;
mod support_tools;
mod teammanager;

//! Shared helpers of the SQL kind tests: a stand-in, a `with` table, a
//! context.
#![allow(dead_code)]

use std::sync::Arc;

use upshift_steps::sql_standin::{StandinHandler, StandinOptions, StandinServer};
use upshift_steps::testing::TestContext;
use upshift_steps::{ParamError, Step, registry};

/// The password every test uses; no output may ever contain it.
pub const PASSWORD: &str = "Pa55-w0rd_never_printed";

/// Starts a stand-in that only accepts user `upshift` with [`PASSWORD`].
pub async fn standin(handler: impl StandinHandler) -> StandinServer {
    StandinServer::start_with(
        Arc::new(handler),
        StandinOptions {
            credentials: Some(("upshift".into(), PASSWORD.into())),
        },
    )
    .await
    .expect("stand-in starts")
}

/// A `with` table: `extra` (TOML) plus `connection` for `server`.
pub fn with(server: &StandinServer, extra: &str) -> toml::Table {
    let mut t: toml::Table = toml::from_str(extra).expect("test TOML");
    t.insert(
        "connection".into(),
        toml::Value::Table(server.connection_table("TM", "upshift", PASSWORD)),
    );
    t
}

/// Builds a step of `kind`.
pub fn build(kind: &str, with: &toml::Table) -> Result<Box<dyn Step>, ParamError> {
    let kinds = registry();
    let k = kinds
        .get(kind)
        .unwrap_or_else(|| panic!("kind {kind} registered"));
    k.build(with)
}

/// A context for a test step, working in a temp dir.
pub fn ctx(dir: &tempfile::TempDir) -> TestContext {
    TestContext::new("db", dir.path())
}

/// Fails the test if `text` contains the password.
pub fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} contains the password: {text}"
    );
}

/// The ADO connection string of a real SQL Server, if the environment has
/// one (`UPSHIFT_TEST_MSSQL`).
pub fn real_server() -> Option<String> {
    std::env::var("UPSHIFT_TEST_MSSQL")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Prints why a test that needs scripted faults does not run against a
/// real server.
pub fn skip_on_real(test: &str) -> bool {
    if real_server().is_some() {
        println!(
            "{test}: skipped against UPSHIFT_TEST_MSSQL (needs the stand-in's scripted faults)"
        );
        return true;
    }
    false
}

//! `upshift diff`.
use super::*;
/// `upshift diff A B`.
pub fn diff_cmd(_a: &str, _b: &str, _json: bool, _journal: &JournalArg) -> Result<u8, CliError> {
    Err(failed("not yet"))
}

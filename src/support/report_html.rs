//! `upshift report`.
use super::*;
/// `upshift report`.
pub fn report_cmd(_s: &str, _o: &Path, _journal: &JournalArg) -> Result<u8, CliError> {
    Err(failed("not yet"))
}

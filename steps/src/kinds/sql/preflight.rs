//! Preflight of the SQL kinds: read-only questions to the real server.
//!
//! - the login works with the site's authentication;
//! - the database exists (`DB_ID`) and the login can open it;
//! - `HAS_PERMS_BY_NAME(db, 'DATABASE', 'BACKUP DATABASE')`;
//! - RESTORE: checked as `HAS_PERMS_BY_NAME(NULL, NULL, 'CREATE ANY
//!   DATABASE')`, the permission of `dbcreator` and `sysadmin`, who may
//!   restore over an existing database (its owner may too without it: the
//!   finding says so);
//! - free space where the backup goes > the database's size: the size is
//!   `sp_spaceused`'s `database_size` (data and log files, an upper bound
//!   of a full backup), the free space `xp_fixeddrives`' megabytes free on
//!   the backup path's drive (a path starting with `/` counts as drive C,
//!   as SQL Server on Linux maps it; a UNC path is not checked). An
//!   approximation, and the report says so.
//!
//! Every statement only reads.

use std::time::Duration;

use super::connection::{Auth, ConnectionParams, Sql, cell_text};
use crate::preflight::{Check, is_placeholder};

/// Bound on each statement a preflight sends.
pub(crate) const STATEMENT_LIMIT: Duration = Duration::from_secs(20);

/// Connects to `database` (default: the connection's) with the site's
/// authentication. `Err` is the check to report (a finding, or not
/// checked when the password is only known at run time).
pub(crate) async fn login(conn: &ConnectionParams, database: Option<&str>) -> Result<Sql, Check> {
    if conn.auth == Auth::Sql && (conn.password().is_empty() || is_placeholder(conn.password())) {
        return Err(Check::not_checked(
            format!("login to {}", conn.display()),
            "the password's secret cannot be read here (set it as for the run)",
        ));
    }
    match conn.connect(database).await {
        Ok(sql) => Ok(sql),
        Err(e) => Err(Check::finding(
            format!("login failed: {e}"),
            "the site's login connects (server reachable from the host that runs the step, login enabled, password right, database open to it)",
            match conn.auth {
                Auth::Sql => {
                    "check the SQL login and its password secret, that the server is reachable (host, port, firewall) and that the login has a user in the database"
                }
                Auth::Integrated => {
                    "check that the account upshift runs as has a login on the server and a user in the database, and that the server is reachable"
                }
            },
        )),
    }
}

/// A file or folder the step reads on this machine exists, and the login
/// works (for kinds that run the statements of a script or folder).
pub(crate) async fn path_and_login(
    ctx: &crate::preflight::PreflightContext,
    path: &std::path::Path,
    expect: crate::preflight::files::Expect,
    role: &str,
    conn: &ConnectionParams,
) -> Vec<Check> {
    let mut out = vec![crate::preflight::files::check_path_for(
        ctx, path, expect, role,
    )];
    out.extend(login_only(conn).await);
    out
}

/// The login works (for kinds that only run statements).
pub(crate) async fn login_only(conn: &ConnectionParams) -> Vec<Check> {
    match login(conn, None).await {
        Ok(sql) => vec![Check::ok(format!("login to {} works", sql.label()))],
        Err(c) => vec![c],
    }
}

async fn scalar(sql: &mut Sql, text: &str, param: Option<&str>) -> Result<String, String> {
    let rows = match param {
        Some(p) => sql.query(text, &[&p], Some(STATEMENT_LIMIT)).await,
        None => sql.batch(text, Some(STATEMENT_LIMIT)).await,
    }
    .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|rs| rs.into_iter().next())
        .map(|r| cell_text(&r, 0))
        .unwrap_or_default())
}

/// Parses `sp_spaceused`'s `12.50 MB` (also KB, GB, TB) into bytes.
pub fn size_text_bytes(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace();
    let n: f64 = it.next()?.parse().ok()?;
    let unit = match it.next()?.to_ascii_uppercase().as_str() {
        "KB" => 1u64 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    Some((n * unit as f64) as u64)
}

/// The drive letter `xp_fixeddrives` names for a backup path: `D` for
/// `D:\Backup`, `C` for `/var/opt/mssql/backup` (SQL Server on Linux maps
/// `/` to C:), `None` for a UNC path.
pub fn backup_drive(path: &str) -> Option<String> {
    let b = path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        Some((b[0] as char).to_ascii_uppercase().to_string())
    } else if path.starts_with('/') {
        Some("C".into())
    } else {
        None
    }
}

/// The checks of `sql.backup` (with its compensation, a restore): login,
/// database, BACKUP and RESTORE permissions, free space at `backup_path`.
pub(crate) async fn backup(
    conn: &ConnectionParams,
    database: &str,
    backup_path: &str,
) -> Vec<Check> {
    let mut out = Vec::new();
    let mut sql = match login(conn, Some("master")).await {
        Ok(s) => s,
        Err(c) => return vec![c],
    };
    out.push(Check::ok(format!("login to {} works", sql.label())));
    let label = conn.display();
    match scalar(&mut sql, "SELECT DB_ID(@P1) AS id", Some(database)).await {
        Ok(id) if id.is_empty() => {
            out.push(Check::finding(
                format!("{label}: there is no database {database}"),
                format!("database {database} (site file) on that server"),
                "correct the database name in the site file, or the server/instance it names",
            ));
            return out;
        }
        Ok(_) => out.push(Check::ok(format!("database {database} exists"))),
        Err(e) => {
            out.push(Check::finding(
                format!("{label}: cannot ask for database {database}: {e}"),
                "the login may read the server's database list",
                "grant the login VIEW ANY DATABASE (the default for public)",
            ));
            return out;
        }
    }
    for (what, text, param, fix) in [
        (
            "BACKUP DATABASE",
            "SELECT HAS_PERMS_BY_NAME(@P1, N'DATABASE', N'BACKUP DATABASE') AS ok",
            Some(database),
            "grant it: USE [db]; GRANT BACKUP DATABASE TO [login's user] (or add the user to db_backupoperator)",
        ),
        (
            "RESTORE (CREATE ANY DATABASE)",
            "SELECT HAS_PERMS_BY_NAME(NULL, NULL, N'CREATE ANY DATABASE') AS ok",
            None,
            "the rollback restores the backup: add the login to dbcreator (or make it the database's owner, which this check cannot see)",
        ),
    ] {
        match scalar(&mut sql, text, param).await.as_deref() {
            Ok("1") => out.push(Check::ok(format!("the login may {what}"))),
            Ok(v) => out.push(Check::finding(
                format!(
                    "{label}: the login may not {what} (HAS_PERMS_BY_NAME = {})",
                    if v.is_empty() { "NULL" } else { v }
                ),
                format!("{what} permitted: the backup is the rollback point of the database phase"),
                fix,
            )),
            Err(e) => out.push(Check::not_checked(
                format!("permission {what}"),
                format!("the server did not answer HAS_PERMS_BY_NAME: {e}"),
            )),
        }
    }
    // Size (in the database) against free space (on the backup's drive).
    let size = match conn.connect(Some(database)).await {
        Ok(mut db) => match db.batch("EXEC sp_spaceused", Some(STATEMENT_LIMIT)).await {
            Ok(sets) => sets
                .first()
                .and_then(|rs| rs.first())
                .and_then(|r| size_text_bytes(&cell_text(r, 1))),
            Err(e) => {
                out.push(Check::not_checked(
                    "the database's size",
                    format!("sp_spaceused failed: {e}"),
                ));
                None
            }
        },
        Err(e) => {
            out.push(Check::finding(
                format!("{label}: the login cannot open database {database}: {e}"),
                "the login has a user in the database",
                "create a user for the login in the database (the backup and update steps run in it)",
            ));
            None
        }
    };
    let Some(size) = size else {
        return out;
    };
    let Some(drive) = backup_drive(backup_path) else {
        out.push(Check::not_checked(
            format!("free space at {backup_path}"),
            "a UNC path: xp_fixeddrives knows local drives only",
        ));
        return out;
    };
    match sql
        .batch("EXEC master.dbo.xp_fixeddrives", Some(STATEMENT_LIMIT))
        .await
    {
        Ok(sets) => {
            let free_mb = sets.first().and_then(|rs| {
                rs.iter().find_map(|r| {
                    cell_text(r, 0)
                        .eq_ignore_ascii_case(&drive)
                        .then(|| cell_text(r, 1).parse::<u64>().ok())
                        .flatten()
                })
            });
            match free_mb {
                Some(mb) if mb << 20 > size => out.push(Check::ok(format!(
                    "{mb} MB free on drive {drive}: for the backup at {backup_path} (database {} MB; approximate: sp_spaceused's size, xp_fixeddrives' free space)",
                    size >> 20
                ))),
                Some(mb) => out.push(Check::finding(
                    format!(
                        "{label}: {mb} MB free on drive {drive} where the backup goes ({backup_path})"
                    ),
                    format!(
                        "more than the database's size, {} MB (sp_spaceused; approximate: a full backup is at most about that)",
                        size >> 20
                    ),
                    "free space on that drive, or point the site file's backup folder at a larger one",
                )),
                None => out.push(Check::not_checked(
                    format!("free space at {backup_path}"),
                    format!("xp_fixeddrives lists no drive {drive}"),
                )),
            }
        }
        Err(e) => out.push(Check::not_checked(
            format!("free space at {backup_path}"),
            format!("xp_fixeddrives failed (it may need sysadmin): {e}"),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_drives() {
        assert_eq!(size_text_bytes("16.00 MB"), Some(16 << 20));
        assert_eq!(size_text_bytes("1.5 GB"), Some(3 << 29));
        assert_eq!(size_text_bytes("12"), None);
        assert_eq!(backup_drive(r"D:\Backup").as_deref(), Some("D"));
        assert_eq!(backup_drive("e:/x").as_deref(), Some("E"));
        assert_eq!(backup_drive("/var/opt/mssql").as_deref(), Some("C"));
        assert_eq!(backup_drive(r"\\nas\backup"), None);
    }
}

//! The Windows calls behind the crate's functions (type-checked by
//! windows-check on Linux; not run there).
#![allow(unsafe_code)]

use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;

use windows_sys::Win32::Storage::FileSystem::{
    GetDiskFreeSpaceExW, MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, MoveFileExW,
};

/// Bytes free for this user on the volume holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let d = wide(dir);
    let mut free: u64 = 0;
    // SAFETY: `d` is a valid NUL-terminated wide string that outlives the
    // call; `free` is a valid u64 to write; the other outputs may be null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            d.as_ptr(),
            &mut free,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(free)
}

/// A path as a NUL-terminated UTF-16 string.
pub(crate) fn wide(p: &Path) -> Vec<u16> {
    p.as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect()
}

/// `MoveFileExW(from, to, REPLACE_EXISTING | WRITE_THROUGH)`.
pub(crate) fn move_replace_write_through(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (wide(from), wide(to));
    // SAFETY: both are valid NUL-terminated wide strings that outlive the call.
    let ok = unsafe {
        MoveFileExW(
            f.as_ptr(),
            t.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
    GetSecurityDescriptorDacl, GetTokenInformation, INHERIT_ONLY_ACE, IsWellKnownSid,
    OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    TOKEN_QUERY, TOKEN_USER, TokenUser, WinBuiltinAdministratorsSid, WinCreatorOwnerSid,
    WinLocalSystemSid,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// ACE type of an "allow" entry (winnt.h ACCESS_ALLOWED_ACE_TYPE).
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;
/// Rights that let someone change a folder's content or its protection:
/// FILE_ADD_FILE 0x2, FILE_ADD_SUBDIRECTORY 0x4, FILE_WRITE_EA 0x10,
/// FILE_DELETE_CHILD 0x40, FILE_WRITE_ATTRIBUTES 0x100, DELETE 0x10000,
/// WRITE_DAC 0x40000, WRITE_OWNER 0x80000, GENERIC_ALL 0x10000000,
/// GENERIC_WRITE 0x40000000.
const WRITE_RIGHTS_MASK: u32 =
    0x2 | 0x4 | 0x10 | 0x40 | 0x100 | 0x10000 | 0x40000 | 0x80000 | 0x1000_0000 | 0x4000_0000;

fn check(ok: i32) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The current user's `TOKEN_USER` (its SID points into the buffer).
fn token_user() -> io::Result<Vec<u64>> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a
    // handle that is closed below.
    check(unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) })?;
    let mut len = 0u32;
    // SAFETY: a size query (null buffer, length 0); it fails with the size.
    unsafe { GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len) };
    // u64 elements: the buffer is aligned for TOKEN_USER.
    let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
    // SAFETY: `buf` holds at least `len` bytes.
    let ok =
        unsafe { GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len) };
    // SAFETY: `token` is the handle opened above.
    unsafe { CloseHandle(token) };
    check(ok)?;
    Ok(buf)
}

fn user_sid(token_user: &[u64]) -> PSID {
    // SAFETY: the buffer was filled by GetTokenInformation(TokenUser).
    unsafe { (*(token_user.as_ptr() as *const TOKEN_USER)).User.Sid }
}

fn sid_text(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is a valid SID; `text` receives a LocalAlloc'd string.
    check(unsafe { ConvertSidToStringSidW(sid, &mut text) })?;
    // SAFETY: a NUL-terminated wide string from the call above.
    let s = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        String::from_utf16_lossy(std::slice::from_raw_parts(text, len))
    };
    // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc.
    unsafe { LocalFree(text.cast()) };
    Ok(s)
}

/// Gives `dir` a protected DACL (inheritance from its parent removed):
/// full control for SYSTEM, Administrators and the current user, inherited
/// by everything created inside.
pub(crate) fn set_owner_only_dacl(dir: &Path) -> io::Result<()> {
    let me = token_user()?;
    let sddl = format!(
        "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{})",
        sid_text(user_sid(&me))?
    );
    let sddl_w: Vec<u16> = sddl.encode_utf16().chain(std::iter::once(0)).collect();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: a NUL-terminated SDDL string; `sd` receives a LocalAlloc'd
    // descriptor freed below.
    check(unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl_w.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    })?;
    let (mut present, mut defaulted) = (0, 0);
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `sd` is the descriptor made above; `dacl` points into it.
    let got =
        check(unsafe { GetSecurityDescriptorDacl(sd, &mut present, &mut dacl, &mut defaulted) });
    let result = got.and_then(|_| {
        let path = wide(dir);
        // SAFETY: `path` is NUL-terminated; `dacl` lives in `sd`, freed after.
        let err = unsafe {
            SetNamedSecurityInfoW(
                path.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            )
        };
        if err == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(err as i32))
        }
    });
    // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
    unsafe { LocalFree(sd) };
    result
}

/// Who, besides SYSTEM, Administrators, the folder's owner, CREATOR OWNER
/// and the current user, may write into `dir` (a SID string), if anyone.
pub(crate) fn others_may_write(dir: &Path) -> io::Result<Option<String>> {
    let me = token_user()?;
    let path = wide(dir);
    let mut owner: PSID = std::ptr::null_mut();
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated; the out pointers point into `sd`,
    // which is freed below.
    let err = unsafe {
        GetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let result = (|| {
        if dacl.is_null() {
            return Ok(Some("everyone (the folder has no DACL)".to_string()));
        }
        // SAFETY: a valid ACL returned above.
        let count = unsafe { (*dacl).AceCount };
        for i in 0..u32::from(count) {
            let mut ace: *mut core::ffi::c_void = std::ptr::null_mut();
            // SAFETY: `i` is below the ACL's ACE count.
            check(unsafe { GetAce(dacl, i, &mut ace) })?;
            // SAFETY: every ACE starts with an ACE_HEADER.
            let header = unsafe { *(ace as *const ACE_HEADER) };
            if header.AceType != ACCESS_ALLOWED_ACE_TYPE
                || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
            {
                continue;
            }
            let allowed = ace as *const ACCESS_ALLOWED_ACE;
            // SAFETY: an ACCESS_ALLOWED_ACE (checked by its type); its SID
            // starts at `SidStart`.
            let (mask, sid) =
                unsafe { ((*allowed).Mask, &(*allowed).SidStart as *const u32 as PSID) };
            if mask & WRITE_RIGHTS_MASK == 0 {
                continue;
            }
            // SAFETY: valid SIDs (from the ACE, the descriptor, the token).
            let trusted = unsafe {
                IsWellKnownSid(sid, WinLocalSystemSid) != 0
                    || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0
                    || IsWellKnownSid(sid, WinCreatorOwnerSid) != 0
                    || (!owner.is_null() && EqualSid(sid, owner) != 0)
                    || EqualSid(sid, user_sid(&me)) != 0
            };
            if !trusted {
                return Ok(Some(
                    sid_text(sid).unwrap_or_else(|_| "another account".into()),
                ));
            }
        }
        Ok(None)
    })();
    // SAFETY: allocated by GetNamedSecurityInfoW.
    unsafe { LocalFree(sd) };
    result
}

/// The owner SID of `path` as text, with the descriptor that holds it.
fn owner_sid(path: &Path) -> io::Result<(PSID, PSECURITY_DESCRIPTOR)> {
    let w = wide(path);
    let mut owner: PSID = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `w` is NUL-terminated; `owner` points into `sd`, which the
    // caller frees with LocalFree.
    let err = unsafe {
        GetNamedSecurityInfoW(
            w.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    Ok((owner, sd))
}

/// Whether `file`'s owner is `dir`'s owner, SYSTEM or Administrators.
pub(crate) fn owner_trust(file: &Path, dir: &Path) -> io::Result<(bool, crate::Owner)> {
    let (f, f_sd) = owner_sid(file)?;
    let d = owner_sid(dir);
    let result = (|| {
        let (d, d_sd) = d?;
        // SAFETY: valid SIDs from the descriptors above.
        let (admin, same) = unsafe {
            (
                IsWellKnownSid(f, WinLocalSystemSid) != 0
                    || IsWellKnownSid(f, WinBuiltinAdministratorsSid) != 0,
                EqualSid(f, d) != 0,
            )
        };
        // SAFETY: allocated by GetNamedSecurityInfoW.
        unsafe { LocalFree(d_sd) };
        let owner = crate::Owner {
            name: None,
            id: sid_text(f)?,
            admin,
        };
        Ok((same || admin, owner))
    })();
    // SAFETY: allocated by GetNamedSecurityInfoW.
    unsafe { LocalFree(f_sd) };
    result
}

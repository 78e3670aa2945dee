//! The demo's packages as real MSI files, and the msiexec stand-in's way
//! to read them.
//!
//! `upshift demo` lays out its packages as the stand-in's `KEY=value` text
//! files (`ProductCode`, `ProductVersion`, `ProductName`, `ExitCode`...).
//! [`make_packages_real`] turns each into a real Windows Installer
//! database (written with the `msi` crate) whose `Property` table holds
//! those rows plus the public properties TeamManager's setups define
//! ([`TM_PUBLIC_PROPERTIES`]), and whose `Directory` table has
//! `INSTALLFOLDER`. Preflight and the msiexec stand-in then read the same
//! real tables: the stand-in through `bin/msi-properties`, a wrapper of
//! `upshift __msi-properties`.

use std::path::Path;

use crate::error::{Error, Result};

/// The public properties the demo's stand-in packages define: the setup
/// dialogs of the manual, as the plan passes them. A property the plan
/// passes that is not here is a preflight finding, as with a real package.
pub const TM_PUBLIC_PROPERTIES: &[&str] = &[
    "INSTANCENAME",
    "PORTNUMBER",
    "SERVERSECURITYMODE",
    "SERVERVALIDATIONMODE",
    "ISDEDICATED",
    "THUMBPRINT",
    "LYNCVERSION",
    "ENABLETENANTID",
    "CLEANUPCONFERENCES",
    "LOGLEVEL",
    "SITEPORT",
];

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::failed(format!("demo: {}: {e}", path.display()))
}

/// The public properties the packages define: [`TM_PUBLIC_PROPERTIES`],
/// and the real names in the site file's `[msi_property_names]` table if
/// it has one (the names a site says its vendor's packages use).
fn public_properties(plan: &crate::plan::Plan) -> Vec<String> {
    let mut out: Vec<String> = TM_PUBLIC_PROPERTIES.iter().map(|s| s.to_string()).collect();
    if let Some(site) = &plan.site {
        for (k, v) in &site.values {
            if k.starts_with("msi_property_names.")
                && let Some(name) = v.as_str().filter(|n| !n.trim().is_empty())
                && !out.iter().any(|o| o == name)
            {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// Rewrites every text package in `dir/packages` (and `dir/packages-7.2`,
/// the previous version, if there is one) as a real MSI file and writes
/// `dir/bin/msi-properties` (how the msiexec stand-in reads them).
pub fn make_packages_real(dir: &Path, plan: &crate::plan::Plan) -> Result<()> {
    let public = public_properties(plan);
    let mut made = 0;
    for folder in ["packages", "packages-7.2"] {
        let packages = dir.join(folder);
        if folder != "packages" && !packages.is_dir() {
            continue;
        }
        made += make_folder_real(&packages, &public)?;
    }
    if made == 0 {
        return Err(Error::failed(format!(
            "demo: no packages in {} to make real",
            dir.join("packages").display()
        )));
    }
    write_reader(dir)
}

fn make_folder_real(packages: &Path, public: &[String]) -> Result<usize> {
    let mut made = 0;
    for entry in std::fs::read_dir(packages).map_err(io(packages))? {
        let path = entry.map_err(io(packages))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("msi") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
            continue; // already a real package
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut rows: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        for p in public {
            if !rows.iter().any(|(k, _)| k == p) {
                rows.push((p.clone(), String::new()));
            }
        }
        rows.push((
            "Manufacturer".into(),
            "upshift demo (a STAND-IN package: real MSI tables, nothing to install)".into(),
        ));
        let refs: Vec<(&str, &str)> = rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        upshift_steps::preflight::msi::write_package(&path, &refs, &["INSTALLFOLDER"])
            .map_err(io(&path))?;
        made += 1;
    }
    Ok(made)
}

/// `bin/msi-properties`: the msiexec stand-in's way to read a package.
fn write_reader(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().map_err(io(dir))?;
    let reader = dir.join("bin/msi-properties");
    std::fs::write(
        &reader,
        format!(
            "#!/bin/sh\n# DEMO: how the msiexec STAND-IN reads a real MSI's Property table.\nexec '{}' __msi-properties \"$@\"\n",
            exe.display().to_string().replace('\'', "'\\''")
        ),
    )
    .map_err(io(&reader))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&reader, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&reader))?;
    }
    Ok(())
}

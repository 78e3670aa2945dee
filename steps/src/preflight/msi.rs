//! A Windows Installer package's own tables, read on any OS with the `msi`
//! crate: what `msi.install`'s preflight compares with the site file.
//!
//! Windows Installer **silently ignores** a public property on the command
//! line that the package does not use, so a misspelled `INSTANCENAM=TM`
//! installs with the default instance name and nobody notices until the
//! service is wrong. A property counts as defined by the package when it is
//! a row of the `Property` table, a directory of the `Directory` table
//! (`INSTALLFOLDER`), set by the `AppSearch` table, or one of Windows
//! Installer's own properties ([`STANDARD_PROPERTIES`]). A package may also
//! read a property only in a custom action or a condition without defining
//! it; such a property is reported as a finding too, with that caveat in
//! the fix (check it against the vendor's documentation).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::Check;

/// Properties of Windows Installer itself, valid on any package's command
/// line (a subset: the ones an unattended install uses).
pub const STANDARD_PROPERTIES: &[&str] = &[
    "ADDDEFAULT",
    "ADDLOCAL",
    "ADDSOURCE",
    "ADVERTISE",
    "ALLUSERS",
    "ARPNOMODIFY",
    "ARPNOREMOVE",
    "ARPNOREPAIR",
    "ARPSYSTEMCOMPONENT",
    "INSTALLLEVEL",
    "LIMITUI",
    "MSIDISABLERMRESTART",
    "MSIFASTINSTALL",
    "MSIINSTALLPERUSER",
    "MSIRESTARTMANAGERCONTROL",
    "PATCH",
    "REBOOT",
    "REBOOTPROMPT",
    "REINSTALL",
    "REINSTALLMODE",
    "REMOVE",
    "ROOTDRIVE",
    "TARGETDIR",
    "TRANSFORMS",
];

/// What a package says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageInfo {
    /// The `Property` table: name → value.
    pub properties: BTreeMap<String, String>,
    /// Keys of the `Directory` table (directories settable as properties).
    pub directories: BTreeSet<String>,
    /// Properties the `AppSearch` table sets.
    pub searched: BTreeSet<String>,
}

impl PackageInfo {
    /// Whether `name` may be passed on msiexec's command line to this
    /// package (see the module docs).
    pub fn defines(&self, name: &str) -> bool {
        self.properties.contains_key(name)
            || self.directories.contains(name)
            || self.searched.contains(name)
            || STANDARD_PROPERTIES.contains(&name)
    }

    /// Every name [`PackageInfo::defines`] accepts that looks public
    /// (upper case), for "did you mean".
    fn public_names(&self) -> impl Iterator<Item = &str> {
        self.properties
            .keys()
            .chain(self.directories.iter())
            .chain(self.searched.iter())
            .map(String::as_str)
            .chain(STANDARD_PROPERTIES.iter().copied())
            .filter(|n| !n.chars().any(|c| c.is_ascii_lowercase()))
    }
}

/// Reads a package's `Property`, `Directory` and `AppSearch` tables.
pub fn read_package(path: &Path) -> std::io::Result<PackageInfo> {
    let mut pkg = ::msi::open(path)?;
    let mut info = PackageInfo::default();
    let rows = pkg.select_rows(::msi::Select::table("Property"))?;
    for row in rows {
        if let (Some(k), v) = (row["Property"].as_str(), &row["Value"]) {
            info.properties
                .insert(k.to_string(), v.as_str().unwrap_or("").to_string());
        }
    }
    if pkg.has_table("Directory") {
        for row in pkg.select_rows(::msi::Select::table("Directory"))? {
            if let Some(k) = row["Directory"].as_str() {
                info.directories.insert(k.to_string());
            }
        }
    }
    if pkg.has_table("AppSearch") {
        for row in pkg.select_rows(::msi::Select::table("AppSearch"))? {
            if let Some(k) = row["Property"].as_str() {
                info.searched.insert(k.to_string());
            }
        }
    }
    Ok(info)
}

/// What the plan and site file assume about one package.
#[derive(Debug, Clone, Default)]
pub struct Expected<'a> {
    /// `ProductCode` (the site file's `product_code`).
    pub product_code: Option<&'a str>,
    /// `ProductVersion` (the plan's `version`): equal, or a prefix of it at
    /// a dot (`8.0` matches `8.0.2113`).
    pub version: Option<&'a str>,
    /// `UpgradeCode`.
    pub upgrade_code: Option<&'a str>,
    /// Public properties passed on the command line.
    pub properties: Vec<&'a str>,
}

/// Whether a package's `ProductVersion` matches the plan's `version`.
pub fn version_matches(package: &str, wanted: &str) -> bool {
    package == wanted
        || package
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Checks the package at `path` against what the plan and site assume.
pub fn check_package(path: &Path, expected: &Expected<'_>) -> Vec<Check> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return vec![Check::finding(
                format!("{shown} is not a file"),
                "the .msi package the step installs",
                "point the step's `package` (or the plan's packages folder) at the .msi file",
            )];
        }
        Err(e) => {
            return vec![Check::finding(
                format!("no package at {shown} ({e})"),
                "the .msi package the step installs, readable by the account that runs upshift",
                "copy the vendor's package there, or correct the packages folder in the plan or site file",
            )];
        }
    };
    let info = match read_package(path) {
        Ok(i) => i,
        Err(e) => {
            return vec![Check::finding(
                format!(
                    "{shown} ({} bytes) cannot be read as a Windows Installer package: {e}",
                    meta.len()
                ),
                "a readable .msi package (OLE compound file with a Property table)",
                "copy the package again from the vendor's media (a partial copy or a wrong file?)",
            )];
        }
    };
    let mut out = vec![Check::ok(format!(
        "{shown}: a readable package ({} bytes)",
        meta.len()
    ))];
    let prop = |name: &str| info.properties.get(name).map(String::as_str);
    let same_code = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    for (name, wanted) in [
        ("ProductCode", expected.product_code),
        ("UpgradeCode", expected.upgrade_code),
    ] {
        let Some(wanted) = wanted.filter(|w| !super::is_placeholder(w)) else {
            continue;
        };
        match prop(name) {
            Some(have) if same_code(have, wanted) => {
                out.push(Check::ok(format!("{name} {have} as the site file says")))
            }
            Some(have) => out.push(Check::finding(
                format!("{shown}: {name} is {have}"),
                format!("{name} {wanted} (site file / plan)"),
                format!(
                    "either this is not the package the site file describes (check the file), or the site file's value is wrong: set it to {have}"
                ),
            )),
            None => out.push(Check::finding(
                format!("{shown} has no {name} in its Property table"),
                format!("{name} {wanted}"),
                "check that this is the vendor's installation package (not a patch or a wrapper)",
            )),
        }
    }
    if let Some(wanted) = expected.version.filter(|w| !super::is_placeholder(w)) {
        match prop("ProductVersion") {
            Some(have) if version_matches(have, wanted) => {
                out.push(Check::ok(format!("ProductVersion {have} (plan: {wanted})")))
            }
            Some(have) => out.push(Check::finding(
                format!("{shown}: ProductVersion is {have}"),
                format!("version {wanted} (the plan's `version`)"),
                "use the package of the version this upgrade installs, or correct the plan's target version",
            )),
            None => out.push(Check::finding(
                format!("{shown} has no ProductVersion"),
                format!("version {wanted}"),
                "check that this is the vendor's installation package",
            )),
        }
    }
    for name in &expected.properties {
        if info.defines(name) {
            continue;
        }
        let near = info
            .public_names()
            .map(|n| (strsim::levenshtein(n, name), n))
            .filter(|(d, _)| *d <= 3)
            .min();
        let fix = match near {
            Some((_, n)) => format!(
                "did you mean {n}? Correct the property name in the plan (Windows Installer ignores unknown properties silently)"
            ),
            None => "remove it from the step's `properties`, or check the name against the vendor's documentation (a property read only by a custom action is not in these tables)".to_string(),
        };
        out.push(Check::finding(
            format!("{shown} does not define the public property {name} the plan passes"),
            "every property passed on the command line defined by the package (Property, Directory or AppSearch table)",
            fix,
        ));
    }
    if !expected.properties.is_empty() && expected.properties.iter().all(|n| info.defines(n)) {
        out.push(Check::ok(format!(
            "the package defines all {} properties the plan passes",
            expected.properties.len()
        )));
    }
    out
}

/// The preflight of an `msi.install` (`install`) or `msi.uninstall` step:
/// the package against what the site assumes (install, or an uninstall by
/// package), and, off Windows, whether the msiexec stand-in is "busy" (the
/// `busy` file beside its state, which makes it answer 1618).
pub fn for_step(
    install: bool,
    package: Option<&Path>,
    expected: Expected<'_>,
    standin_state: Option<&Path>,
) -> Vec<Check> {
    let mut out = Vec::new();
    match package {
        Some(p) if !super::is_placeholder(&p.display().to_string()) => {
            let expected = if install {
                expected
            } else {
                // Removing by package: only that it is the product meant.
                Expected {
                    product_code: expected.product_code,
                    ..Expected::default()
                }
            };
            out.extend(check_package(p, &expected));
        }
        Some(p) => out.push(Check::not_checked(
            format!("package {}", p.display()),
            "its path is only known when the run gets there (an output of an earlier step)",
        )),
        None => {}
    }
    if !cfg!(windows)
        && let Some(busy) = standin_state.and_then(Path::parent).map(|d| d.join("busy"))
        && busy.exists()
    {
        out.push(Check::finding(
            format!("the msiexec stand-in is busy ({} exists)", busy.display()),
            "no installation in progress (msiexec would answer 1618)",
            format!(
                "remove {} once the stand-in's installation is over",
                busy.display()
            ),
        ));
    }
    out
}

/// Writes a minimal Windows Installer database with these `Property` rows
/// and `Directory` keys: what `upshift demo` and the tests use as packages
/// (real MSI files with real tables, not installable: no files, features
/// or components).
pub fn write_package(
    path: &Path,
    properties: &[(&str, &str)],
    directories: &[&str],
) -> std::io::Result<()> {
    use ::msi::{Column, Insert, Package, PackageType, Value};
    // The compound file is read while written: open it for both.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut pkg = Package::create(PackageType::Installer, file)?;
    {
        let summary = pkg.summary_info_mut();
        summary.set_title("upshift stand-in package".to_string());
        summary.set_comments(
            "A stand-in package written by upshift (demo and tests): real MSI tables, nothing to install"
                .to_string(),
        );
    }
    pkg.create_table(
        "Property",
        vec![
            Column::build("Property").primary_key().id_string(72),
            Column::build("Value").text_string(0),
        ],
    )?;
    pkg.insert_rows(
        Insert::into("Property").rows(
            properties
                .iter()
                .map(|(k, v)| vec![Value::from(*k), Value::from(*v)])
                .collect(),
        ),
    )?;
    pkg.create_table(
        "Directory",
        vec![
            Column::build("Directory").primary_key().id_string(72),
            Column::build("Directory_Parent").nullable().id_string(72),
            Column::build("DefaultDir")
                .category(::msi::Category::DefaultDir)
                .string(255),
        ],
    )?;
    let mut rows = vec![vec![
        Value::from("TARGETDIR"),
        Value::Null,
        Value::from("SourceDir"),
    ]];
    for d in directories {
        rows.push(vec![
            Value::from(*d),
            Value::from("TARGETDIR"),
            Value::from(".:Luware"),
        ]);
    }
    pkg.insert_rows(Insert::into("Directory").rows(rows))?;
    pkg.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("TM-AC.msi");
        write_package(
            &p,
            &[
                ("ProductCode", "{6C1B0A52-7A0E-4C61-9F1A-080000000001}"),
                ("UpgradeCode", "{11111111-2222-3333-4444-555555555555}"),
                ("ProductVersion", "8.0.2113"),
                ("INSTANCENAME", "TM"),
                ("PORTNUMBER", "8101"),
            ],
            &["INSTALLFOLDER"],
        )
        .unwrap();
        p
    }

    #[test]
    fn a_written_package_reads_back_with_its_tables() {
        let d = tempfile::tempdir().unwrap();
        let info = read_package(&package(d.path())).unwrap();
        assert_eq!(info.properties["ProductVersion"], "8.0.2113");
        assert!(info.defines("INSTALLFOLDER"), "a Directory key");
        assert!(info.defines("REBOOT"), "a standard property");
        assert!(!info.defines("INSTANCENAM"));
    }

    #[test]
    fn a_misspelled_property_and_a_wrong_product_code_are_findings() {
        let d = tempfile::tempdir().unwrap();
        let p = package(d.path());
        let checks = check_package(
            &p,
            &Expected {
                product_code: Some("{6C1B0A52-7A0E-4C61-9F1A-080000000099}"),
                version: Some("8.0"),
                upgrade_code: None,
                properties: vec!["INSTANCENAM", "PORTNUMBER", "INSTALLFOLDER"],
            },
        );
        let findings: Vec<&Check> = checks.iter().filter(|c| c.is_finding()).collect();
        assert_eq!(findings.len(), 2, "{checks:#?}");
        let text = format!("{findings:?}");
        assert!(text.contains("INSTANCENAM") && text.contains("did you mean INSTANCENAME"));
        assert!(text.contains("ProductCode is {6C1B0A52-7A0E-4C61-9F1A-080000000001}"));
    }

    #[test]
    fn a_ready_package_has_no_finding_and_a_missing_one_has_one() {
        let d = tempfile::tempdir().unwrap();
        let p = package(d.path());
        let ok = check_package(
            &p,
            &Expected {
                product_code: Some("{6c1b0a52-7a0e-4c61-9f1a-080000000001}"),
                version: Some("8.0"),
                upgrade_code: Some("{11111111-2222-3333-4444-555555555555}"),
                properties: vec!["INSTANCENAME", "PORTNUMBER", "INSTALLFOLDER", "REBOOT"],
            },
        );
        assert!(!ok.iter().any(Check::is_finding), "{ok:#?}");
        let missing = check_package(&d.path().join("nope.msi"), &Expected::default());
        assert!(
            matches!(&missing[..], [Check::Finding { found, .. }] if found.contains("no package"))
        );
        std::fs::write(d.path().join("text.msi"), "ProductCode={X}\n").unwrap();
        let text = check_package(&d.path().join("text.msi"), &Expected::default());
        assert!(
            matches!(&text[..], [Check::Finding { found, .. }] if found.contains("cannot be read"))
        );
    }

    #[test]
    fn versions_match_at_a_dot() {
        assert!(version_matches("8.0", "8.0"));
        assert!(version_matches("8.0.2113", "8.0"));
        assert!(!version_matches("8.01", "8.0"));
        assert!(!version_matches("7.2.1", "8.0"));
    }
}

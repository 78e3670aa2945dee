//! Rule sets: checks that the generic plan parser does not know, because
//! they come from one product's manual.
//!
//! - A **named rule set** checks a plan's site file; a plan turns it on
//!   with `rules = ["teammanager"]`. The parser asks [`rule_set`] for each
//!   name and reports an unknown name with the list of [`RULE_SETS`].
//! - A **plan rule** ([`PLAN_RULES`]) runs on every plan: a step kind that
//!   carries a constraint of its own (one ICH conference cleanup per plan)
//!   states it here, not in the parser.
//!
//! Rules see plain views ([`SiteView`], [`StepKind`]) and produce located
//! [`PlanError`]s through [`crate::diagnostics`]; they do not depend on the
//! parser, so adding a product's rules never touches `plan.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::diagnostics::{Locator, PlanError};

pub mod teammanager;

/// A plan's site file, as a rule sees it.
pub struct SiteView<'a> {
    /// Where it was read from (for located errors).
    pub path: &'a Path,
    /// Its exact text.
    pub text: &'a str,
    /// The document, restricted to the keys the rule set declares
    /// ([`RuleSet::reads`]).
    pub doc: &'a toml::Value,
    /// Every value of `doc` by dotted path.
    pub values: &'a BTreeMap<String, toml::Value>,
}

/// One step of a plan, as a plan rule sees it.
pub struct StepKind<'a> {
    /// The step id.
    pub id: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Where the kind is written in the plan (byte offsets).
    pub span: Range<usize>,
}

/// A named set of site rules.
pub struct RuleSet {
    /// The name a plan gives in `rules = [...]`.
    pub name: &'static str,
    /// The site keys it reads, as dotted patterns
    /// ([`crate::sitekeys::KeyPattern`]: `components.*.port`, `ad.*_group`,
    /// `**.*thumbprint`). Its [`SiteView`] holds only these keys, and a site
    /// key that neither they nor the plan's references read is an error.
    pub reads: &'static [&'static str],
    /// Every violation in the site file.
    pub check_site: fn(&SiteView<'_>) -> Vec<PlanError>,
}

/// A rule every plan is checked against (steps in id order).
pub type PlanRule = fn(&Locator<'_>, &[StepKind<'_>]) -> Vec<PlanError>;

/// The rule sets a plan can name.
pub const RULE_SETS: &[RuleSet] = &[RuleSet {
    name: "teammanager",
    reads: teammanager::READS,
    check_site: teammanager::check_site,
}];

/// Rules checked on every plan.
pub const PLAN_RULES: &[PlanRule] = &[teammanager::one_ich_cleanup];

/// The rule set called `name`, if there is one.
pub fn rule_set(name: &str) -> Option<&'static RuleSet> {
    RULE_SETS.iter().find(|r| r.name == name)
}

/// The names of every rule set, comma-separated (for hints).
pub fn known() -> String {
    RULE_SETS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

//! `${...}` references in plan values: parsing and substitution.
//!
//! Forms: `${vars.NAME}`, `${secrets.NAME}`, `${steps.ID.outputs.NAME}`,
//! and inside `foreach` bodies `${item}` / `${item_index}` (left in place
//! for the step to fill per item). `$${` writes a literal `${`.

use std::collections::BTreeMap;

/// One reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ref {
    /// `${vars.NAME}`
    Var(String),
    /// `${secrets.NAME}`
    Secret(String),
    /// `${steps.ID.outputs.NAME}`
    Output {
        /// Step id.
        step: String,
        /// Output name.
        name: String,
    },
    /// `${item}` or `${item_index}` (foreach bodies).
    Item,
    /// `${site.a.b.c}`: a value of the plan's site file, by its dotted path.
    Site(String),
    /// `${site.a.b.c?}`: a site value that may be absent. Absent, a value
    /// that is exactly this reference is left out (its key is removed from
    /// the table, its element from the array); inside text it is empty.
    /// For settings a site may or may not have (`[sql] instance`).
    SiteOptional(String),
}

/// A `${...}` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRef {
    /// The text between `${` and `}` (or to the end of the string).
    pub text: String,
    /// What is wrong.
    pub message: String,
}

/// A piece of a string: literal text or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(Ref, String),
}

fn parse_ref(inner: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = inner.trim().split('.').collect();
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    match parts.as_slice() {
        ["item"] | ["item_index"] => Ok(Ref::Item),
        ["vars", n] if ok_name(n) => Ok(Ref::Var(n.to_string())),
        ["secrets", n] if ok_name(n) => Ok(Ref::Secret(n.to_string())),
        ["steps", id, "outputs", n] if ok_name(id) && ok_name(n) => Ok(Ref::Output {
            step: id.to_string(),
            name: n.to_string(),
        }),
        ["site", rest @ ..] if !rest.is_empty() && rest.iter().all(|p| ok_name(p)) => {
            Ok(Ref::Site(rest.join(".")))
        }
        ["site", rest @ .., last]
            if last.len() > 1
                && last.ends_with('?')
                && ok_name(&last[..last.len() - 1])
                && rest.iter().all(|p| ok_name(p)) =>
        {
            let mut path: Vec<&str> = rest.to_vec();
            path.push(&last[..last.len() - 1]);
            Ok(Ref::SiteOptional(path.join(".")))
        }
        ["steps", ..] => Err("a step output is written ${steps.<id>.outputs.<name>}".into()),
        ["vars" | "secrets", ..] => Err(format!("write ${{{}.<name>}} with one name", parts[0])),
        _ => Err(
            "references are ${vars.x}, ${secrets.x}, ${site.a.b} (${site.a.b?} if it may be absent), ${steps.<id>.outputs.<name>} or ${item}"
                .into(),
        ),
    }
}

fn pieces(s: &str) -> Result<Vec<Piece>, BadRef> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        text.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err(BadRef {
                    text: body.to_string(),
                    message: "`${` is not closed by `}` (write `$${` for a literal `${`)".into(),
                });
            };
            let inner = &body[..end];
            let r = parse_ref(inner).map_err(|message| BadRef {
                text: inner.to_string(),
                message,
            })?;
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Ref(r, inner.trim().to_string()));
            rest = &body[end + 1..];
        } else {
            text.push('$');
            rest = &after[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// Flattens a TOML table into dotted paths: every table, array and scalar
/// gets an entry (`components.FE.port`, `components.FE`, `lync.sip_connectors`).
pub fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    if !prefix.is_empty() {
        out.insert(prefix.to_string(), v.clone());
    }
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten(&p, v, out);
        }
    }
}

/// Every reference in `s`.
pub fn refs_in(s: &str) -> Result<Vec<Ref>, BadRef> {
    Ok(pieces(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r, _) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Every reference anywhere in a TOML value, with the string it is in.
pub fn refs_in_value(v: &toml::Value, out: &mut Vec<(String, Result<Ref, BadRef>)>) {
    match v {
        toml::Value::String(s) => match refs_in(s) {
            Ok(rs) => out.extend(rs.into_iter().map(|r| (s.clone(), Ok(r)))),
            Err(e) => out.push((s.clone(), Err(e))),
        },
        toml::Value::Array(a) => a.iter().for_each(|v| refs_in_value(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| refs_in_value(v, out)),
        _ => {}
    }
}

/// What references resolve to.
pub trait Resolver {
    /// The value of a reference, or `None` to leave it as written.
    fn resolve(&self, r: &Ref) -> Option<toml::Value>;
}

/// Values from maps: vars, site, secrets, outputs. Items are always left in
/// place.
pub struct MapResolver<'a> {
    /// Variables.
    pub vars: &'a BTreeMap<String, toml::Value>,
    /// Site values by dotted path (`components.FE.port`).
    pub site: &'a BTreeMap<String, toml::Value>,
    /// Secret values (or placeholders for dry runs and checks).
    pub secrets: &'a dyn Fn(&str) -> Option<String>,
    /// Step outputs.
    pub outputs: &'a dyn Fn(&str, &str) -> Option<String>,
}

/// No site file: no site values.
static NO_SITE: BTreeMap<String, toml::Value> = BTreeMap::new();

/// What `${secrets.NAME}` shows where values are not known (checks, dry runs).
pub fn placeholder_secret(name: &str) -> Option<String> {
    Some(format!("<secret {name}>"))
}

/// What `${steps.S.outputs.N}` shows before step S has run.
pub fn placeholder_output(step: &str, name: &str) -> Option<String> {
    Some(format!("<output {name} of step {step}>"))
}

impl<'a> MapResolver<'a> {
    /// A resolver over a plan's vars and site values (`None`: no site file).
    pub fn new(
        vars: &'a BTreeMap<String, toml::Value>,
        site: Option<&'a BTreeMap<String, toml::Value>>,
        secrets: &'a dyn Fn(&str) -> Option<String>,
        outputs: &'a dyn Fn(&str, &str) -> Option<String>,
    ) -> MapResolver<'a> {
        MapResolver {
            vars,
            site: site.unwrap_or(&NO_SITE),
            secrets,
            outputs,
        }
    }

    /// A resolver that shows secrets and step outputs as placeholders
    /// ([`placeholder_secret`], [`placeholder_output`]): what is only
    /// known at run time.
    pub fn placeholders(
        vars: &'a BTreeMap<String, toml::Value>,
        site: Option<&'a BTreeMap<String, toml::Value>>,
    ) -> MapResolver<'a> {
        MapResolver::new(vars, site, &placeholder_secret, &placeholder_output)
    }
}

impl Resolver for MapResolver<'_> {
    fn resolve(&self, r: &Ref) -> Option<toml::Value> {
        match r {
            Ref::Var(n) => self.vars.get(n).cloned(),
            Ref::Site(path) | Ref::SiteOptional(path) => self.site.get(path).cloned(),
            Ref::Secret(n) => (self.secrets)(n).map(toml::Value::String),
            Ref::Output { step, name } => (self.outputs)(step, name).map(toml::Value::String),
            Ref::Item => None,
        }
    }
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Substitutes references in a string. A string that is exactly one
/// reference takes the referenced value's type (so `port = "${vars.port}"`
/// with an integer var yields an integer).
pub fn substitute_str(s: &str, r: &dyn Resolver) -> Result<toml::Value, BadRef> {
    let ps = pieces(s)?;
    if let [Piece::Ref(rf, _)] = ps.as_slice()
        && let Some(v) = r.resolve(rf)
    {
        return Ok(v);
    }
    let mut out = String::new();
    for p in ps {
        match p {
            Piece::Text(t) => out.push_str(&t.replace("${", "$${")),
            Piece::Ref(rf, raw) => match r.resolve(&rf) {
                Some(v) => out.push_str(&value_text(&v)),
                None if matches!(rf, Ref::SiteOptional(_)) => {}
                None => {
                    out.push_str("${");
                    out.push_str(&raw);
                    out.push('}');
                }
            },
        }
    }
    // Literal `${` written as `$${` stays escaped only while references
    // remain for a later pass (items); otherwise it becomes `${`.
    if !out.contains("${item") {
        out = out.replace("$${", "${");
    }
    Ok(toml::Value::String(out))
}

/// Whether `v` is exactly one optional reference (`${site.x?}`) that
/// resolves to nothing: then it is left out where it is written.
fn absent_optional(v: &toml::Value, r: &dyn Resolver) -> bool {
    let toml::Value::String(s) = v else {
        return false;
    };
    match pieces(s).as_deref() {
        Ok([Piece::Ref(rf @ Ref::SiteOptional(_), _)]) => r.resolve(rf).is_none(),
        _ => false,
    }
}

/// Substitutes references everywhere in a value.
pub fn substitute(v: &toml::Value, r: &dyn Resolver) -> Result<toml::Value, BadRef> {
    Ok(match v {
        toml::Value::String(s) => substitute_str(s, r)?,
        toml::Value::Array(a) => toml::Value::Array(
            a.iter()
                .filter(|v| !absent_optional(v, r))
                .map(|v| substitute(v, r))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => toml::Value::Table(substitute_table(t, r)?),
        other => other.clone(),
    })
}

/// Substitutes references in every value of a table.
pub fn substitute_table(t: &toml::Table, r: &dyn Resolver) -> Result<toml::Table, BadRef> {
    t.iter()
        .filter(|(_, v)| !absent_optional(v, r))
        .map(|(k, v)| Ok((k.clone(), substitute(v, r)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static EMPTY: BTreeMap<String, toml::Value> = BTreeMap::new();

    fn resolver<'a>(vars: &'a BTreeMap<String, toml::Value>) -> MapResolver<'a> {
        MapResolver {
            vars,
            site: &EMPTY,
            secrets: &|n| (n == "pw").then(|| "s3cret".to_string()),
            outputs: &|s, n| (s == "backup" && n == "path").then(|| "/b/tm.bak".to_string()),
        }
    }

    #[test]
    fn parses_every_form_and_rejects_the_rest() {
        assert_eq!(
            refs_in("x ${vars.a} ${secrets.b} ${steps.c.outputs.d} ${item}").unwrap(),
            vec![
                Ref::Var("a".into()),
                Ref::Secret("b".into()),
                Ref::Output {
                    step: "c".into(),
                    name: "d".into()
                },
                Ref::Item
            ]
        );
        assert!(refs_in("${steps.c.path}").is_err());
        assert!(refs_in("${nope}").is_err());
        assert!(refs_in("${vars.a").is_err());
        assert!(refs_in("$${vars.a}").unwrap().is_empty());
    }

    #[test]
    fn an_absent_optional_site_value_is_left_out() {
        let vars = BTreeMap::new();
        let mut site = BTreeMap::new();
        site.insert("sql.port".to_string(), toml::Value::Integer(1433));
        let r = MapResolver {
            site: &site,
            ..resolver(&vars)
        };
        assert_eq!(
            refs_in("${site.sql.instance?}").unwrap(),
            [Ref::SiteOptional("sql.instance".into())]
        );
        assert!(refs_in("${site.?}").is_err());
        let t: toml::Table = toml::from_str(
            "host = \"h\"\ninstance = \"${site.sql.instance?}\"\nport = \"${site.sql.port?}\"\nl = [\"${site.sql.instance?}\", \"a${site.sql.instance?}b\"]\n",
        )
        .unwrap();
        let out = substitute_table(&t, &r).unwrap();
        let want: toml::Table =
            toml::from_str("host = \"h\"\nport = 1433\nl = [\"ab\"]\n").unwrap();
        assert_eq!(out, want);
    }

    #[test]
    fn substitutes_typed_whole_values_and_text() {
        let mut vars = BTreeMap::new();
        vars.insert("port".to_string(), toml::Value::Integer(8080));
        vars.insert("name".to_string(), toml::Value::String("tm".into()));
        let r = resolver(&vars);
        assert_eq!(
            substitute_str("${vars.port}", &r).unwrap(),
            toml::Value::Integer(8080)
        );
        assert_eq!(
            substitute_str("http://h:${vars.port}/${vars.name}", &r).unwrap(),
            toml::Value::String("http://h:8080/tm".into())
        );
        assert_eq!(
            substitute_str("${steps.backup.outputs.path} pw=${secrets.pw}", &r).unwrap(),
            toml::Value::String("/b/tm.bak pw=s3cret".into())
        );
        assert_eq!(
            substitute_str("echo ${item} $${literal}", &r).unwrap(),
            toml::Value::String("echo ${item} $${literal}".into())
        );
        assert_eq!(
            substitute_str("cost $5 $${x}", &r).unwrap(),
            toml::Value::String("cost $5 ${x}".into())
        );
    }
}

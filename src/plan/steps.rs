//! [`Steps`]: a plan's step definitions by id.
//!
//! A plan of 100,000 steps keeps 100,000 definitions for the whole run, so
//! their container counts: a `BTreeMap<String, StepDef>` held each
//! definition (328 bytes) in half-full B-tree nodes beside a second copy of
//! its id (~700 bytes a step, measured by massif). Here the definitions
//! sit in one `Vec` sorted by their own `id`: a lookup is a binary search,
//! iteration is in id order (as the map's was), and nothing is stored
//! twice. A plan is built once and never grows, so nothing is lost by
//! giving up cheap inserts.

use std::borrow::Borrow;
use std::ops::Index;

use super::StepDef;

/// Step definitions by id, in id order.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    /// Sorted by `id`, ids unique.
    defs: Vec<StepDef>,
}

/// An id and its definition, as [`Steps::iter`] yields them.
type Entry<'a> = (&'a String, &'a StepDef);

fn entry(def: &StepDef) -> Entry<'_> {
    (&def.id, def)
}

impl Steps {
    /// The definitions in any order; of two with the same id the later
    /// one is kept (as a map's insert would).
    pub fn new(mut defs: Vec<StepDef>) -> Steps {
        defs.sort_by(|a, b| a.id.cmp(&b.id));
        defs.dedup_by(|later, kept| {
            let same = later.id == kept.id;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        defs.shrink_to_fit();
        Steps { defs }
    }

    /// The position of step `id` in id order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.defs.binary_search_by(|d| d.id.as_str().cmp(id)).ok()
    }

    /// The definition of step `id`.
    pub fn get(&self, id: &str) -> Option<&StepDef> {
        self.position(id).map(|i| &self.defs[i])
    }

    /// The definition of step `id`, to change it (not its id).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut StepDef> {
        self.position(id).map(|i| &mut self.defs[i])
    }

    /// Whether the plan has step `id`.
    pub fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_some()
    }

    /// The definition at a position (see [`Steps::position`]).
    pub fn at(&self, i: usize) -> &StepDef {
        &self.defs[i]
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// Whether there is no step.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Ids and definitions, in id order.
    pub fn iter(&self) -> std::iter::Map<std::slice::Iter<'_, StepDef>, fn(&StepDef) -> Entry<'_>> {
        self.defs.iter().map(entry as fn(&StepDef) -> Entry<'_>)
    }

    /// Ids, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.defs.iter().map(|d| &d.id)
    }

    /// Definitions, in id order.
    pub fn values(&self) -> std::slice::Iter<'_, StepDef> {
        self.defs.iter()
    }

    /// Definitions, in id order, to change them (not their ids).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, StepDef> {
        self.defs.iter_mut()
    }
}

impl<'a> IntoIterator for &'a Steps {
    type Item = Entry<'a>;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, StepDef>, fn(&'a StepDef) -> Entry<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.defs.iter().map(entry as fn(&'a StepDef) -> Entry<'a>)
    }
}

/// `steps[id]` with `id` a `&str` or a `&String`; panics if there is no
/// such step (like a map's index).
impl<Q: Borrow<str> + ?Sized> Index<&Q> for Steps {
    type Output = StepDef;

    fn index(&self, id: &Q) -> &StepDef {
        let id = id.borrow();
        self.get(id)
            .unwrap_or_else(|| panic!("no step `{id}` in the plan"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: &str) -> StepDef {
        StepDef {
            id: id.into(),
            body: super::super::Body {
                kind: "sleep".into(),
                with: toml::Table::new(),
            },
            needs: Vec::new(),
            retry: Default::default(),
            timeout: None,
            locks: Vec::new(),
            on_failure: Default::default(),
            resume: Default::default(),
            compensate: None,
            description: None,
            host: None,
            instance_of: None,
            decl: 0,
        }
    }

    #[test]
    fn looks_up_and_iterates_in_id_order() {
        let steps = Steps::new(vec![def("b"), def("a@h"), def("a"), def("c")]);
        assert_eq!(steps.keys().collect::<Vec<_>>(), ["a", "a@h", "b", "c"]);
        assert_eq!(steps["b"].id, "b");
        assert_eq!(steps[&"c".to_string()].id, "c");
        assert!(steps.get("d").is_none());
        assert!(steps.contains_key("a@h"));
        assert_eq!(steps.position("b"), Some(2));
        let pairs: Vec<(&String, &str)> = (&steps)
            .into_iter()
            .map(|(k, d)| (k, d.id.as_str()))
            .collect();
        assert!(pairs.iter().all(|(k, v)| k.as_str() == *v));
    }

    #[test]
    fn of_an_id_given_twice_the_later_definition_is_kept() {
        let mut later = def("a");
        later.decl = 7;
        let steps = Steps::new(vec![def("a"), def("b"), later]);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps["a"].decl, 7);
    }
}

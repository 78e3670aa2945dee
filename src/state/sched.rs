//! The scheduler's index: what [`crate::decide`] needs to know about a run,
//! kept up to date as [`crate::state::RunState`] folds each event, so that a
//! step transition costs O(that step's edges · log steps) instead of a walk
//! of the whole plan.
//!
//! The index is built from the plan's edges once ([`Graph`], shared by every
//! state of the same plan) and a state's steps ([`Sched::new`]); after that
//! every change of a step's status, retry time, compensation or approval
//! moves the step between sets and adjusts the counts of its dependents.
//! Like the state it belongs to, it is a pure function of the events folded:
//! no I/O, no clock. `decide` asks a state without an index (or with the
//! index of another plan, e.g. after `--accept-plan-change`) to build one
//! for the occasion, which costs one walk of the plan.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::plan::{LockScope, Plan, ResumePolicy};
use crate::state::{CompStatus, RunState, StepState, StepStatus};

/// A plan's edges and per-step scheduling facts, by position in the plan's
/// topological order (so iterating an index set in order is plan order).
#[derive(Debug)]
pub struct Graph {
    /// Hash of the plan text it was built from.
    hash: String,
    ids: Rows<u8>,
    /// Positions sorted by id: [`Graph::position`] is a binary search (a
    /// hash map of the ids cost ~90 bytes a step, a copy of each id).
    by_id: Vec<u32>,
    needs: Rows<u32>,
    dependents: Rows<u32>,
    ask: Vec<bool>,
    /// Lock ids each step holds: one per (lock, host) — or per lock for a
    /// site-wide lock — so `msiexec` on two hosts is two locks.
    locks: Rows<u32>,
    lock_limits: Vec<u32>,
    /// The host each step runs on (an index into `host_limits`; `None`:
    /// the coordinator).
    host: Vec<Option<u32>>,
    /// Each host's `max_concurrent` (`u32::MAX`: no cap).
    host_limits: Vec<u32>,
}

/// One short list per step, all in one allocation (a `Vec` per step cost
/// its 24 bytes and a heap block of at least 32, for one or two entries).
#[derive(Debug)]
struct Rows<T> {
    /// Row `i` is `items[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
    items: Vec<T>,
}

impl<T: Copy> Rows<T> {
    fn with_capacity(rows: usize) -> Rows<T> {
        Rows {
            ends: Vec::with_capacity(rows),
            items: Vec::new(),
        }
    }

    /// Appends the next row.
    fn push(&mut self, row: impl IntoIterator<Item = T>) {
        self.items.extend(row);
        self.ends.push(self.items.len() as u32);
    }

    fn get(&self, i: usize) -> &[T] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.items[start..self.ends[i] as usize]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn shrink_to_fit(&mut self) {
        self.ends.shrink_to_fit();
        self.items.shrink_to_fit();
    }
}

impl Graph {
    /// The index of `plan`.
    pub fn new(plan: &Plan) -> Graph {
        let index: HashMap<&str, u32> = plan
            .order
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect();
        let mut lock_ids: HashMap<(&str, LockScope<'_>), u32> = HashMap::new();
        let mut lock_limits = Vec::new();
        let host_ids: HashMap<&str, u32> = plan
            .hosts
            .keys()
            .enumerate()
            .map(|(i, h)| (h.as_str(), i as u32))
            .collect();
        let host_limits: Vec<u32> = plan
            .hosts
            .values()
            .map(|h| h.max_concurrent.unwrap_or(u32::MAX))
            .collect();
        let n = plan.order.len();
        let mut host = Vec::with_capacity(n);
        let mut locks = Rows::with_capacity(n);
        let mut needs = Rows::with_capacity(n);
        let mut ask = Vec::with_capacity(n);
        let mut ids = Rows::with_capacity(n);
        // Reverse edges counted first, then placed: no list per step.
        let mut dependents_of = vec![0u32; n];
        for (i, id) in plan.order.iter().enumerate() {
            let def = &plan.steps[id];
            needs.push(
                def.needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied()),
            );
            for &d in needs.get(i) {
                dependents_of[d as usize] += 1;
            }
            ids.push(id.bytes());
            ask.push(def.resume == ResumePolicy::Ask);
            host.push(def.host.as_deref().and_then(|h| host_ids.get(h).copied()));
            locks.push(def.locks.iter().map(|l| {
                let scope = plan.lock_scope(l, def.host.as_deref());
                *lock_ids.entry((l.as_str(), scope)).or_insert_with(|| {
                    lock_limits.push(plan.lock_limit(l));
                    (lock_limits.len() - 1) as u32
                })
            }));
        }
        let mut dependents = Rows {
            ends: Vec::with_capacity(n),
            items: vec![0; needs.items.len()],
        };
        let mut end = 0;
        for count in &dependents_of {
            end += count;
            dependents.ends.push(end);
        }
        // Filled in plan order, each row from its start.
        let mut next: Vec<u32> = (0..n)
            .map(|i| dependents.ends[i] - dependents_of[i])
            .collect();
        drop(dependents_of);
        for i in 0..n {
            for &d in needs.get(i) {
                dependents.items[next[d as usize] as usize] = i as u32;
                next[d as usize] += 1;
            }
        }
        for rows in [&mut needs, &mut locks] {
            rows.shrink_to_fit();
        }
        ids.shrink_to_fit();
        let mut by_id: Vec<u32> = (0..n as u32).collect();
        by_id.sort_unstable_by(|&a, &b| ids.get(a as usize).cmp(ids.get(b as usize)));
        Graph {
            hash: plan.hash.clone(),
            ids,
            by_id,
            needs,
            dependents,
            ask,
            locks,
            lock_limits,
            host,
            host_limits,
        }
    }

    /// Whether this is the index of `plan` (same text, same steps).
    pub fn is_of(&self, plan: &Plan) -> bool {
        self.hash == plan.hash && self.len() == plan.order.len()
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the plan has no step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of the step at position `i`.
    pub fn id(&self, i: u32) -> &str {
        std::str::from_utf8(self.ids.get(i as usize)).expect("ids are the plan's strings")
    }

    /// The position of a step.
    pub fn position(&self, id: &str) -> Option<u32> {
        self.by_id
            .binary_search_by(|&i| self.ids.get(i as usize).cmp(id.as_bytes()))
            .ok()
            .map(|at| self.by_id[at])
    }

    /// Direct dependents of the step at `i`.
    pub fn dependents(&self, i: u32) -> &[u32] {
        self.dependents.get(i as usize)
    }

    /// Locks the step at `i` holds while it runs.
    pub fn locks(&self, i: u32) -> &[u32] {
        self.locks.get(i as usize)
    }

    /// The limit of lock `l`.
    pub fn lock_limit(&self, l: u32) -> u32 {
        self.lock_limits[l as usize]
    }

    /// Number of distinct locks.
    pub fn lock_count(&self) -> usize {
        self.lock_limits.len()
    }

    /// The host the step at `i` runs on (`None`: the coordinator).
    pub fn host(&self, i: u32) -> Option<u32> {
        self.host[i as usize]
    }

    /// The cap on steps running at once on host `h`.
    pub fn host_limit(&self, h: u32) -> u32 {
        self.host_limits[h as usize]
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.host_limits.len()
    }
}

/// The part of a step's state the index depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Key {
    pub status: StepStatus,
    pub retry_at: Option<DateTime<Utc>>,
    pub comp: CompStatus,
    pub approved: bool,
}

impl Key {
    pub fn of(st: &StepState) -> Key {
        Key {
            status: st.status,
            retry_at: st.retry_at,
            comp: st.compensation,
            approved: st.approved,
        }
    }
}

fn is_done(s: StepStatus) -> bool {
    matches!(s, StepStatus::Succeeded | StepStatus::Skipped)
}

/// The scheduler's view of one run of one plan.
#[derive(Clone)]
pub struct Sched {
    graph: Arc<Graph>,
    keys: Vec<Key>,
    /// Needs of each step that are not done (succeeded or skipped).
    unmet: Vec<u32>,
    /// Pending or interrupted steps whose needs are done (not those that
    /// must ask an operator first), by plan position.
    ready: BTreeSet<u32>,
    /// Interrupted steps with `resume = "ask"`, not approved, needs done.
    asking: BTreeSet<u32>,
    /// Steps waiting for a retry, by the time it is due (`None`: at once).
    retry: BTreeSet<(Option<DateTime<Utc>>, u32)>,
    failed: BTreeSet<u32>,
    waiting: BTreeSet<u32>,
    comp_failed: BTreeSet<u32>,
    running: u32,
    comp_running: u32,
    done: u32,
    /// Holders of each lock (running steps).
    held: Vec<u32>,
    /// Running steps on each host.
    host_running: Vec<u32>,
}

impl std::fmt::Debug for Sched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sched")
            .field("steps", &self.graph.len())
            .field("ready", &self.ready.len())
            .field("running", &self.running)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Sched {
    /// The index of `state` for the plan `graph` was built from: one walk
    /// of the plan.
    pub fn new(graph: Arc<Graph>, state: &RunState) -> Sched {
        let n = graph.len();
        let keys: Vec<Key> = (0..n as u32)
            .map(|i| Key::of(state.step(graph.id(i))))
            .collect();
        let unmet = (0..n)
            .map(|i| {
                graph
                    .needs
                    .get(i)
                    .iter()
                    .filter(|&&d| !is_done(keys[d as usize].status))
                    .count() as u32
            })
            .collect();
        let mut s = Sched {
            held: vec![0; graph.lock_count()],
            host_running: vec![0; graph.host_count()],
            graph,
            keys,
            unmet,
            ready: BTreeSet::new(),
            asking: BTreeSet::new(),
            retry: BTreeSet::new(),
            failed: BTreeSet::new(),
            waiting: BTreeSet::new(),
            comp_failed: BTreeSet::new(),
            running: 0,
            comp_running: 0,
            done: 0,
        };
        for i in 0..n as u32 {
            s.enter(i);
        }
        s
    }

    /// The plan's index.
    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// A step changed from `before` to `after`.
    pub(crate) fn update(&mut self, id: &str, before: Key, after: Key) {
        if before == after {
            return;
        }
        let Some(i) = self.graph.position(id) else {
            // A step the plan no longer has (an accepted plan change).
            return;
        };
        self.leave(i);
        self.keys[i as usize] = after;
        self.enter(i);
        let (was, is) = (is_done(before.status), is_done(after.status));
        if was != is {
            let graph = Arc::clone(&self.graph);
            for &d in graph.dependents(i) {
                self.leave(d);
                if is {
                    self.unmet[d as usize] -= 1;
                } else {
                    self.unmet[d as usize] += 1;
                }
                self.enter(d);
            }
        }
    }

    fn enter(&mut self, i: u32) {
        self.membership(i, true);
    }

    fn leave(&mut self, i: u32) {
        self.membership(i, false);
    }

    /// Adds step `i` to (or removes it from) the sets and counts its key
    /// and its unmet needs put it in.
    fn membership(&mut self, i: u32, add: bool) {
        fn set(s: &mut BTreeSet<u32>, i: u32, add: bool) {
            if add {
                s.insert(i);
            } else {
                s.remove(&i);
            }
        }
        fn count(c: &mut u32, add: bool) {
            if add {
                *c += 1;
            } else {
                *c -= 1;
            }
        }
        let k = self.keys[i as usize];
        let needs_met = self.unmet[i as usize] == 0;
        match k.status {
            StepStatus::Pending | StepStatus::Interrupted if needs_met => {
                if k.status == StepStatus::Interrupted && self.graph.ask[i as usize] && !k.approved
                {
                    set(&mut self.asking, i, add);
                } else {
                    set(&mut self.ready, i, add);
                }
            }
            StepStatus::Pending | StepStatus::Interrupted => {}
            StepStatus::RetryWait => {
                if add {
                    self.retry.insert((k.retry_at, i));
                } else {
                    self.retry.remove(&(k.retry_at, i));
                }
            }
            StepStatus::Running => {
                count(&mut self.running, add);
                for &l in self.graph.locks.get(i as usize) {
                    count(&mut self.held[l as usize], add);
                }
                if let Some(h) = self.graph.host[i as usize] {
                    count(&mut self.host_running[h as usize], add);
                }
            }
            StepStatus::Waiting => set(&mut self.waiting, i, add),
            StepStatus::Failed => set(&mut self.failed, i, add),
            StepStatus::Succeeded | StepStatus::Skipped => count(&mut self.done, add),
        }
        match k.comp {
            CompStatus::Running => count(&mut self.comp_running, add),
            CompStatus::Failed => set(&mut self.comp_failed, i, add),
            CompStatus::None | CompStatus::Done => {}
        }
    }

    /// The key of the step at `i`.
    pub(crate) fn key(&self, i: u32) -> Key {
        self.keys[i as usize]
    }

    /// Steps whose attempt could start (needs done, not waiting for an
    /// operator), in plan order.
    pub fn ready(&self) -> impl Iterator<Item = u32> + '_ {
        self.ready.iter().copied()
    }

    /// Interrupted `resume = "ask"` steps that need an approval first.
    pub fn asking(&self) -> impl Iterator<Item = u32> + '_ {
        self.asking.iter().copied()
    }

    /// Steps waiting for a retry, earliest first.
    pub fn retries(&self) -> impl Iterator<Item = (Option<DateTime<Utc>>, u32)> + '_ {
        self.retry.iter().copied()
    }

    /// Unmet needs of the step at `i`.
    pub fn unmet(&self, i: u32) -> u32 {
        self.unmet[i as usize]
    }

    /// Failed steps, in plan order.
    pub fn failed(&self) -> impl Iterator<Item = u32> + '_ {
        self.failed.iter().copied()
    }

    /// Steps waiting for an operator, in plan order.
    pub fn waiting(&self) -> impl Iterator<Item = u32> + '_ {
        self.waiting.iter().copied()
    }

    /// Steps whose compensation failed, in plan order.
    pub fn comp_failed(&self) -> impl Iterator<Item = u32> + '_ {
        self.comp_failed.iter().copied()
    }

    /// Steps running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// Compensations running now.
    pub fn comp_running(&self) -> u32 {
        self.comp_running
    }

    /// Steps done (succeeded or skipped).
    pub fn done(&self) -> u32 {
        self.done
    }

    /// Running holders of lock `l`.
    pub fn held(&self, l: u32) -> u32 {
        self.held[l as usize]
    }

    /// Steps running on host `h`.
    pub fn host_running(&self, h: u32) -> u32 {
        self.host_running[h as usize]
    }

    /// Compares this index with one built from scratch (for tests): `Err`
    /// names the first difference.
    pub fn check(&self, state: &RunState) -> Result<(), String> {
        let fresh = Sched::new(Arc::clone(&self.graph), state);
        macro_rules! same {
            ($f:ident) => {
                if self.$f != fresh.$f {
                    return Err(format!(
                        "index field `{}` is {:?}, a fresh fold gives {:?}",
                        stringify!($f),
                        self.$f,
                        fresh.$f
                    ));
                }
            };
        }
        same!(keys);
        same!(unmet);
        same!(ready);
        same!(asking);
        same!(retry);
        same!(failed);
        same!(waiting);
        same!(comp_failed);
        same!(running);
        same!(comp_running);
        same!(done);
        same!(held);
        same!(host_running);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_hold_each_list_in_turn() {
        let mut r = Rows::with_capacity(3);
        r.push([1u32, 2]);
        r.push([]);
        r.push([7]);
        assert_eq!(
            (r.get(0), r.get(1), r.get(2), r.len()),
            (&[1, 2][..], &[][..], &[7][..], 3)
        );
    }

    /// The index's edges and ids are the plan's: a diamond, a lock, a step
    /// that needs two.
    #[test]
    fn the_graph_is_the_plans() {
        let text = "name = \"p\"\n\
            [steps.a]\nkind = \"sleep\"\nwith = { duration = \"0s\" }\n\
            [steps.b]\nkind = \"sleep\"\nneeds = [\"a\"]\nlocks = [\"l\"]\nwith = { duration = \"0s\" }\n\
            [steps.c]\nkind = \"sleep\"\nneeds = [\"a\"]\nlocks = [\"l\"]\nwith = { duration = \"0s\" }\n\
            [steps.d]\nkind = \"sleep\"\nneeds = [\"c\", \"b\"]\nwith = { duration = \"0s\" }\n";
        let plan = crate::plan::parse(
            std::path::Path::new("p.toml"),
            text,
            &upshift_steps::registry(),
            &Default::default(),
        )
        .expect("a valid plan");
        let g = Graph::new(&plan);
        assert_eq!(g.len(), 4);
        for (i, id) in plan.order.iter().enumerate() {
            let i = i as u32;
            assert_eq!(g.id(i), id);
            assert_eq!(g.position(id), Some(i));
            let deps: Vec<&str> = g.dependents(i).iter().map(|&d| g.id(d)).collect();
            assert_eq!(
                deps,
                plan.dependents(id).collect::<Vec<_>>(),
                "dependents of {id}"
            );
            let needs: Vec<&str> = g.needs.get(i as usize).iter().map(|&d| g.id(d)).collect();
            let mut needs = needs;
            needs.sort();
            assert_eq!(needs, plan.steps[id].needs, "needs of {id}");
        }
        assert_eq!(g.position("e"), None);
        let (b, c) = (g.position("b").unwrap(), g.position("c").unwrap());
        assert_eq!(g.locks(b), g.locks(c));
        assert_eq!(g.lock_count(), 1);
        assert!(g.locks(g.position("a").unwrap()).is_empty());
    }
}

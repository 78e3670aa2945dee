//! In-memory store for tests. Holds encoded records, so the codec's checks
//! run exactly as they do on disk.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::{JournalError, JournalStore, decode_at, encode_batch};
use crate::codec;
use crate::event::{Envelope, RunId};

/// A journal that lives and dies with the process.
#[derive(Default)]
pub struct MemoryStore {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Mutable access to a stored record, for corruption tests.
    pub fn record_mut(&mut self, run: RunId, seq: u64) -> Option<&mut Vec<u8>> {
        self.records.get_mut(codec::key(run, seq).as_slice())
    }
}

impl JournalStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn append(&mut self, batch: &[Envelope]) -> Result<(), JournalError> {
        for (k, v) in encode_batch(batch)? {
            self.records.insert(k.to_vec(), v);
        }
        Ok(())
    }

    fn runs(&self) -> Result<Vec<RunId>, JournalError> {
        let mut out = Vec::new();
        let mut from = codec::key(RunId(uuid::Uuid::nil()), 0).to_vec();
        while let Some((k, _)) = self.records.range(from.clone()..).next() {
            let (run, _) = codec::parse_key(k).map_err(|detail| JournalError::Corrupt {
                run: RunId(uuid::Uuid::nil()),
                seq: 0,
                detail,
            })?;
            out.push(run);
            match next_run_key(run) {
                Some(k) => from = k.to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    fn scan(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut dyn FnMut(Envelope) -> ControlFlow<()>,
    ) -> Result<(), JournalError> {
        let lo = codec::key(run, from_seq).to_vec();
        let hi = codec::key(run, u64::MAX).to_vec();
        for (k, v) in self.records.range(lo..=hi) {
            if visit(decode_at(k, v)?).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn next_seq(&self, run: RunId) -> Result<u64, JournalError> {
        let lo = codec::key(run, 0).to_vec();
        let hi = codec::key(run, u64::MAX).to_vec();
        Ok(match self.records.range(lo..=hi).next_back() {
            Some((k, _)) => codec::parse_key(k).map(|(_, s)| s + 1).unwrap_or(0),
            None => 0,
        })
    }
}

/// The first key of the run after `run`, if there can be one.
pub(crate) fn next_run_key(run: RunId) -> Option<[u8; codec::KEY_LEN]> {
    let n = u128::from_be_bytes(run.to_bytes()).checked_add(1)?;
    Some(codec::key(RunId::from_bytes(n.to_be_bytes()), 0))
}

//! The sled store (cargo feature `sled`), kept because it was the original
//! design's choice. sled 0.34's `flush()` calls `sync_file_range` but never
//! `fsync`/`fdatasync` on Linux (measured with strace; sled#1452), which does
//! not flush the disk's write cache; so after every `flush()` this store calls
//! `sync_data()` on sled's data file itself. `flush_async` is never used: it
//! deadlocked with concurrent callers here (sled#1241).

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::memory::next_run_key;
use super::{JournalError, JournalStore, decode_at, encode_batch};
use crate::codec;
use crate::event::{Envelope, RunId};

/// A journal in a sled directory.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    data_file: File,
}

fn map_err(path: &Path, e: sled::Error) -> JournalError {
    match e {
        sled::Error::Io(io) => JournalError::io(path, io),
        sled::Error::Corruption { at, .. } => JournalError::Damaged {
            path: path.to_path_buf(),
            detail: format!("sled reports corruption at {at:?}"),
        },
        other => JournalError::Backend {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

impl SledStore {
    /// Opens (creating if needed) the sled directory.
    pub fn open(path: &Path) -> Result<SledStore, JournalError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| map_err(path, e))?;
        let data_path = path.join("db");
        let data_file = File::open(&data_path).map_err(|e| JournalError::io(&data_path, e))?;
        Ok(SledStore {
            db,
            path: path.to_path_buf(),
            data_file,
        })
    }
}

impl JournalStore for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn append(&mut self, batch: &[Envelope]) -> Result<(), JournalError> {
        let mut b = sled::Batch::default();
        for (k, v) in encode_batch(batch)? {
            b.insert(k.as_slice(), v);
        }
        self.db.apply_batch(b).map_err(|e| map_err(&self.path, e))?;
        self.db.flush().map_err(|e| map_err(&self.path, e))?;
        // The real durability point: see the module docs.
        self.data_file
            .sync_data()
            .map_err(|e| JournalError::io(self.path.join("db"), e))
    }

    fn runs(&self) -> Result<Vec<RunId>, JournalError> {
        let mut out = Vec::new();
        let mut from = codec::key(RunId(uuid::Uuid::nil()), 0);
        while let Some(item) = self.db.range(from.as_slice()..).next() {
            let (k, _) = item.map_err(|e| map_err(&self.path, e))?;
            let (run, _) = codec::parse_key(&k).map_err(|detail| JournalError::Corrupt {
                run: RunId(uuid::Uuid::nil()),
                seq: 0,
                detail,
            })?;
            out.push(run);
            match next_run_key(run) {
                Some(k) => from = k,
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
        let lo = codec::key(run, from_seq);
        let hi = codec::key(run, u64::MAX);
        for item in self.db.range(lo.as_slice()..=hi.as_slice()) {
            let (k, v) = item.map_err(|e| map_err(&self.path, e))?;
            if visit(decode_at(&k, &v)?).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn next_seq(&self, run: RunId) -> Result<u64, JournalError> {
        let lo = codec::key(run, 0);
        let hi = codec::key(run, u64::MAX);
        match self.db.range(lo.as_slice()..=hi.as_slice()).next_back() {
            Some(item) => {
                let (k, _) = item.map_err(|e| map_err(&self.path, e))?;
                Ok(codec::parse_key(&k).map(|(_, s)| s + 1).unwrap_or(0))
            }
            None => Ok(0),
        }
    }
}

//! The Raft log: an append-only file of checksummed codec records, mirrored in memory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::super::codec::{self, CodecError, Kind};
use super::files::*;
use super::*;

#[derive(Serialize, Deserialize)]
pub(super) enum Record {
    Purged(LogId<NodeId>),
    Entry(Entry<TypeConfig>),
}

pub(super) fn encode_record(rec: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = codec::encode(Kind::LogRecord, rec).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other("raft log record larger than 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Decode the record at the start of `buf`; `Ok(None)` means a torn write (short, or a
/// checksum that does not match). A record whose checksum matches but whose payload does
/// not decode was written whole by something else (another format, a bug): that is an
/// error, not a tail to cut, or the log behind it would be silently thrown away.
pub(super) fn decode_record(buf: &[u8]) -> Result<Option<(Record, usize)>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let Some(payload) = HEADER_LEN
        .checked_add(len)
        .and_then(|end| buf.get(HEADER_LEN..end))
    else {
        return Ok(None);
    };
    if len == 0 || crc32c::crc32c(payload) != crc {
        return Ok(None);
    }
    let rec = codec::decode(Kind::LogRecord, payload)?;
    Ok(Some((rec, HEADER_LEN + len)))
}

/// Whether undecodable bytes at the end of the log are what an interrupted append leaves:
/// a record cut short by the end of the file, a last record whose bytes did not all reach
/// the disk, or zeros (a file extended but not written). A bad record followed by a good
/// one is damage in the middle: cutting there would silently drop entries
/// this node may have acknowledged to the leader.
pub(super) fn is_torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|b| *b == 0) {
        return true;
    }
    let Some(header) = rest.get(..HEADER_LEN) else {
        return true;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let end = HEADER_LEN.saturating_add(len);
    // Torn unless a whole, checksummed record starts right where the bad one ends.
    !matches!(rest.get(end..).map(decode_record), Some(Ok(Some(_))))
}

/// Test switch: with `STRATA_FAILPOINT=raft-write-error`, appends fail once the file
/// `FAIL_WRITES` exists in the Raft directory, as a dying disk would make them.
fn injected_write_error(dir: &Path) -> io::Result<()> {
    if crate::failpoint::on("raft-write-error") && dir.join("FAIL_WRITES").exists() {
        return Err(io::Error::other(
            "injected write error (failpoint raft-write-error)",
        ));
    }
    Ok(())
}

/// Refuses a Raft directory written by format 1 (JSON): its `raft.log` would read as a
/// torn tail and be truncated to nothing, and its `snapshot.json` would be ignored.
pub(super) fn check_not_legacy(dir: &Path) -> Result<(), RaftGlueError> {
    let legacy = || RaftGlueError::LegacyFormat {
        dir: dir.to_path_buf(),
    };
    if dir.join(LEGACY_SNAPSHOT_FILE).exists() {
        return Err(legacy());
    }
    let log_path = dir.join(LOG_FILE);
    let mut head = [0u8; HEADER_LEN + 2];
    let read = match File::open(&log_path) {
        Ok(mut f) => read_up_to(&mut f, &mut head).map_err(io_err(&log_path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&log_path)(e)),
    };
    // Format 1 records were JSON objects (`{"Entry":…` / `{"Purged":…`); format 2
    // payloads start with a magic, never with `{"`.
    if read == head.len() && &head[HEADER_LEN..] == b"{\"" {
        return Err(legacy());
    }
    Ok(())
}

/// `read_exact` that stops at end of file; returns how much was read.
pub(super) fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(super) struct LogInner {
    pub(super) dir: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) file: File,
    pub(super) cache: BTreeMap<u64, Entry<TypeConfig>>,
    pub(super) last_purged: Option<LogId<NodeId>>,
    pub(super) vote: Option<Vote<NodeId>>,
    pub(super) committed: Option<LogId<NodeId>>,
}

impl LogInner {
    pub(super) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.cache
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }

    /// Rewrite the whole log from the in-memory view (used by truncate and purge).
    pub(super) fn rewrite(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            encode_record(&Record::Purged(p), &mut buf)?;
        }
        for e in self.cache.values() {
            encode_record(&Record::Entry(e.clone()), &mut buf)?;
        }
        write_atomic(&self.log_path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&self.log_path)?;
        Ok(())
    }
}

/// File-backed Raft log; clones share the same file and cache (the clone is the log reader).
#[derive(Clone)]
pub(super) struct LogStore {
    pub(super) inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    pub(super) fn open(dir: &Path) -> Result<Self, RaftGlueError> {
        let log_path = dir.join(LOG_FILE);
        let bytes = match fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(RaftGlueError::Open {
                    dir: dir.to_path_buf(),
                    source,
                })
            }
        };

        let mut cache = BTreeMap::new();
        let mut last_purged = None;
        let mut pos = 0;
        while pos < bytes.len() {
            let decoded = decode_record(&bytes[pos..]).map_err(|e| RaftGlueError::Corrupt {
                path: log_path.clone(),
                reason: format!("record at byte {pos}: {e}"),
            })?;
            let Some((rec, used)) = decoded else {
                break;
            };
            match rec {
                Record::Purged(id) => last_purged = Some(id),
                Record::Entry(e) => {
                    cache.insert(e.log_id.index, e);
                }
            }
            pos += used;
        }

        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| RaftGlueError::Open {
                dir: dir.to_path_buf(),
                source,
            })?;
        if pos < bytes.len() && !is_torn_tail(&bytes[pos..]) {
            return Err(RaftGlueError::Corrupt {
                path: log_path,
                reason: format!(
                    "the record at byte {pos} is damaged and {} bytes of records follow it \
                     (a damaged disk, not an interrupted write); restore the disk, or move the \
                     raft directory away so that this broker rejoins from its peers",
                    bytes.len() - pos
                ),
            });
        }
        if pos < bytes.len() {
            // Appends are acknowledged only after fsync, so an undecodable tail is a write the
            // crash interrupted; nobody was told it succeeded.
            tracing::warn!(
                path = %log_path.display(),
                offset = pos,
                dropped = bytes.len() - pos,
                "discarding torn tail of raft log"
            );
            file.set_len(pos as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&log_path))?;
        }

        let vote = read_json(&dir.join(VOTE_FILE))?;
        let committed = read_json(&dir.join(COMMITTED_FILE))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                log_path,
                file,
                cache,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic mid-update cannot leave the cache ahead of the file in a harmful way: the
        // file is the source of truth on restart.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self
            .lock()
            .cache
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        let path = inner.dir.join(VOTE_FILE);
        to_json(vote)
            .and_then(|b| write_atomic(&path, &b))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut inner = self.lock();
        let path = inner.dir.join(COMMITTED_FILE);
        to_json(&committed)
            .and_then(|b| write_atomic(&path, &b))
            .map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut appended = Vec::new();
        for e in entries {
            encode_record(&Record::Entry(e.clone()), &mut buf)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &err))?;
            appended.push(e);
        }
        // The metadata log is small and low-rate, so a synchronous write + fsync here is
        // simpler than a background flusher and keeps append order trivially correct.
        let res = injected_write_error(&inner.dir).and_then(|()| {
            inner
                .file
                .write_all(&buf)
                .and_then(|()| inner.file.sync_data())
        });
        if let Err(e) = res {
            let msg = e.to_string();
            callback.log_io_completed(Err(e));
            return Err(StorageIOError::write_logs(&io::Error::other(msg)).into());
        }
        for e in appended {
            inner.cache.insert(e.log_id.index, e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        inner.cache.split_off(&log_id.index);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        inner.cache = inner.cache.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

//! The local write-ahead log: the default write-behind queue.
//!
//! # Files
//!
//! In the log directory:
//!
//! * `wal-<first seq>.log` — segments. Each record is a frame
//!   `len u32 | crc32 u32 | seq u64 | record` (little-endian; the CRC covers
//!   `seq | record`). A new segment starts when the current one passes
//!   [`WalOptions::segment_bytes`]. The segment being written (or one a
//!   crash left mid-rotation) ends in zeros, up to a chunk past its frames:
//!   see [Preallocation](#preallocation).
//! * `checkpoint` — the highest sequence number below which every record has
//!   been confirmed by the store, and the highest record version the log has
//!   seen (so versions keep growing after a restart that finds the log
//!   empty, even if the clock went back); with its own CRC, written by
//!   rename, and synced before any segment is deleted.
//! * `dead/<seq>.dead` — one file per dead letter.
//!
//! # What is durable when a call returns
//!
//! One thread owns the active segment. It takes every append waiting for it,
//! writes them with one positioned `write` (over zeros filled in ahead: see
//! [Preallocation](#preallocation)) and, with [`Fsync::Batched`] (the
//! default), one `fdatasync`, and only then acknowledges them. So when `set_behind`
//! returns `Ok`, its record is on disk and survives a crash of the process, of
//! the kernel or a power cut (as far as the disk honours flushes). Batching is
//! what makes this fast: while one `fdatasync` runs, the next appends gather,
//! and all of them share the next one. [`Fsync::Batched::interval`] can hold a
//! batch open longer (more sharing, more latency); `max_records` caps it.
//!
//! With [`Fsync::Periodic`] an acknowledged record has been handed to the
//! kernel (`write` returned) and the thread calls `fdatasync` on its own
//! schedule: within `interval` of the acknowledgement, and before more than
//! `max_records` acknowledged records are unsynced. It survives the process
//! being killed at once and a power cut after at most that window — the
//! trade PostgreSQL makes with `synchronous_commit = off` and Redis with
//! `appendfsync everysec`. Several times faster than [`Fsync::Batched`],
//! because a call no longer waits for the disk's flush. If a background
//! `fdatasync` fails, writes already acknowledged may not be on disk; the log
//! says so (an error in the log) and refuses every later append, so the
//! failure cannot go unnoticed.
//!
//! With [`Fsync::Never`] the log never calls `fdatasync` (the kernel writes
//! the pages back when it chooses): it survives the process being killed,
//! not a kernel crash or a power cut. The choice is the operator's.
//!
//! # Recovery
//!
//! Opening the log reads every segment. Its records end where a frame's
//! length would be zero (no real frame is empty: it holds its sequence
//! number). A frame that is cut short or fails its CRC at the end of the
//! last segment, with no intact frame after it, is a write the crash
//! interrupted — never acknowledged — and is cut off, with the zeros after
//! it. A damaged frame with intact frames after it, in any segment, is
//! corruption: it is logged and counted, and the frames after it are
//! recovered (the next intact one is found by its sequence number and CRC).
//! Anything but zeros after a segment's last intact frame, in an older
//! segment, is counted as corruption too. Records after
//! the checkpoint go back to the flusher; replaying one the store had already
//! applied is harmless (the store's version guard, see [`crate::write::store`]).
//!
//! A segment is deleted once every record in it is confirmed.
//!
//! # Preallocation
//!
//! The writer zero-fills its segment [`PREALLOCATE`] bytes at a time, ahead
//! of the records, and writes the records over the zeros. This is what
//! PostgreSQL does with its WAL segments, for the same reason: an
//! `fdatasync` after an append that grows the file must also commit the
//! file's new size to the filesystem's journal, a second flush; one after a
//! write into blocks the file already has flushes the data alone. On this
//! project's benchmark machine (ext4 on a virtual disk) that took a
//! 10 KB write plus `fdatasync` from ~320 µs to ~200 µs, and
//! [`Fsync::Batched`] is bound by that latency. The zeros are not synced on
//! their own (PostgreSQL syncs a segment before using it): the first sync
//! after a chunk is filled in carries them, its write and the journal
//! commit, so with [`Fsync::Batched`] one acknowledgement per MiB of records
//! takes longer. Recovery needs no more than that: zeros read as the end of
//! the records, and a chunk that never reached the disk held nothing
//! acknowledged. The cost: the log needs up to a chunk of free disk space
//! ahead of its records, and on a nearly full disk fails an append a little
//! sooner.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::queue::{Dead, Queue, QueueFuture, Queued};
use super::record::Record;
use super::WriteError;

/// When the log calls `fdatasync`; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Acknowledge only after `fdatasync`. A batch closes after `interval`
    /// (zero: as soon as the previous sync is done) or at `max_records`.
    Batched {
        /// How long a batch stays open for more appends.
        interval: Duration,
        /// The most records one sync covers.
        max_records: usize,
    },
    /// Acknowledge after `write`, and `fdatasync` in the background: at most
    /// `interval` after a record was acknowledged, and before more than
    /// `max_records` acknowledged records would be waiting for a sync. What
    /// PostgreSQL's `synchronous_commit = off` and Redis's `appendfsync
    /// everysec` promise: a killed process loses nothing, a power cut loses
    /// at most the last `interval` (or `max_records`) of acknowledged writes.
    Periodic {
        /// The longest an acknowledged record waits for its `fdatasync`.
        interval: Duration,
        /// The most acknowledged records one sync may cover.
        max_records: usize,
    },
    /// Acknowledge after `write`: survives the process, not the machine.
    Never,
}

impl Fsync {
    /// [`Fsync::Periodic`] with a 10 ms interval and at most 4,096 records.
    pub fn periodic() -> Self {
        Fsync::Periodic {
            interval: Duration::from_millis(10),
            max_records: 4096,
        }
    }
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Batched {
            interval: Duration::ZERO,
            max_records: 4096,
        }
    }
}

/// Settings of the write-ahead log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The directory holding the log (created if missing). One writer per
    /// directory: two processes sharing one would corrupt it.
    pub dir: PathBuf,
    /// When a new segment starts (default 64 MiB).
    pub segment_bytes: u64,
    /// When records are synced to disk (default [`Fsync::Batched`], no wait).
    pub fsync: Fsync,
}

impl WalOptions {
    /// A log in `dir` with the default settings.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalOptions {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            fsync: Fsync::default(),
        }
    }
}

const FRAME_HEAD: usize = 8;
/// The highest sequence number a log may hold: at a million records a
/// second, a log reaches it in 146,000 years, so one above it on disk is
/// corruption, refused at open rather than left to overflow the counter.
const MAX_SEQ: u64 = 1 << 62;

/// How far ahead of its records the writer zero-fills a segment (see
/// [Preallocation](self#preallocation)); at most `segment_bytes`.
const PREALLOCATE: u64 = 1 << 20;

struct Append {
    record: Record,
    done: oneshot::Sender<Result<(), WriteError>>,
}

struct State {
    /// Durable, not handed to the flusher yet.
    unread: VecDeque<Queued>,
    /// Handed out, not confirmed: id → [`Record::weight`].
    outstanding: BTreeMap<u64, u64>,
    /// The weight of every record in `unread` and `outstanding`.
    bytes: u64,
    /// Every record below this has been pushed to `unread` (or was recovered).
    next_durable: u64,
    /// Segments by first sequence number; the last one is being written.
    segments: Vec<(u64, PathBuf)>,
    checkpoint: u64,
    /// The highest record version written or recovered.
    max_version: u64,
    /// `fdatasync` calls made by [`Fsync::Periodic`]'s schedule.
    background_syncs: u64,
}

/// What [`Wal::open`] found.
pub(crate) struct Recovered {
    pub wal: Wal,
    /// Records acknowledged and not confirmed before the restart.
    pub pending: usize,
    /// The highest record version in the log (versions must keep growing).
    pub max_version: u64,
    /// Frames skipped as corrupt.
    pub corrupt: u64,
}

/// The write-ahead log queue.
///
/// File work other than appends (recovery when the writer opens the log,
/// checkpoints, deleting segments, dead letters) runs on tokio's blocking
/// pool, not on the async worker that called: a `fsync` or a directory scan
/// there would stall every task that worker serves. (Appends go to the log's
/// own thread.)
pub(crate) struct Wal {
    dir: PathBuf,
    appends: mpsc::Sender<Append>,
    state: Arc<Mutex<State>>,
    /// Held while the checkpoint is written and segments deleted: two
    /// confirmations finishing together would otherwise write the same
    /// temporary checkpoint file at once, and a torn one reads as no
    /// checkpoint (every record replayed, the version floor lost). The
    /// flusher confirms one batch at a time, so this is a safeguard for any
    /// caller that does not.
    checkpointing: Arc<Mutex<()>>,
}

impl Wal {
    /// Opens (or creates) the log in `options.dir` and recovers what it holds.
    pub fn open(options: &WalOptions) -> Result<Recovered, WriteError> {
        let dir = options.dir.clone();
        fs::create_dir_all(dir.join("dead")).map_err(|e| io_error(&dir, e))?;
        let (checkpoint, checkpoint_version) = read_checkpoint(&dir);
        let mut segments = list_segments(&dir).map_err(|e| io_error(&dir, e))?;
        let (mut unread, mut max_seq, mut max_version, mut corrupt) =
            (VecDeque::new(), checkpoint, checkpoint_version, 0u64);
        let last = segments.len().checked_sub(1);
        for (i, (first_seq, path)) in segments.iter().enumerate() {
            let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
            let parsed = parse_segment(&bytes, *first_seq);
            let (frames, good_len) = (parsed.frames, parsed.end);
            if parsed.unreadable > 0 {
                corrupt += parsed.unreadable;
                tracing::error!(segment = %path.display(), unreadable = parsed.unreadable, "write-ahead log: intact frames of an unknown format skipped");
            }
            if parsed.damaged > 0 {
                corrupt += parsed.damaged;
                tracing::error!(segment = %path.display(), damaged = parsed.damaged, "write-ahead log: damaged frames skipped; the intact frames after them are recovered");
            }
            for (seq, record) in frames {
                max_seq = max_seq.max(seq);
                max_version = max_version.max(record.version);
                if seq > checkpoint {
                    unread.push_back(Queued { id: seq, record });
                }
            }
            let zero_tail = bytes[good_len..].iter().all(|&b| b == 0);
            if good_len < bytes.len() {
                if Some(i) == last {
                    // A torn tail: the write a crash interrupted, never
                    // acknowledged; or the zeros filled in ahead of the
                    // records. Cut it so new frames follow good ones.
                    if !zero_tail {
                        tracing::warn!(segment = %path.display(), "write-ahead log: cutting a torn tail of {} bytes", bytes.len() - good_len);
                    }
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| io_error(path, e))?;
                    file.set_len(good_len as u64)
                        .map_err(|e| io_error(path, e))?;
                    file.sync_all().map_err(|e| io_error(path, e))?;
                } else if !zero_tail {
                    corrupt += 1;
                    tracing::error!(segment = %path.display(), offset = good_len, "write-ahead log: corrupt data after a segment's last intact frame, skipped");
                }
            }
        }
        unread.make_contiguous().sort_by_key(|q| q.id);
        // Dead letters are named by sequence number, and a power cut can
        // take the log's unsynced tail (`Fsync::Periodic`) with numbers a dead
        // letter already uses: new numbers start above both.
        let highest = max_seq.max(highest_dead_letter(&dir));
        if highest >= MAX_SEQ {
            return Err(WriteError::Queue(format!(
                "the write-ahead log in {} holds sequence number {highest}, beyond any real log's ({MAX_SEQ} at most): a corrupt checkpoint, frame or dead-letter name",
                dir.display()
            )));
        }
        let next_seq = highest + 1;
        // Always start a fresh segment: the last one may end in a skipped
        // corrupt frame, and appending after it would hide new records.
        let path = segment_path(&dir, next_seq);
        let (file, written) = create_segment(&dir, &path)?;
        // (An empty segment left by a crash right after a rotation already
        // has this name.)
        if segments.last().map(|s| s.0) != Some(next_seq) {
            segments.push((next_seq, path));
        }
        let pending = unread.len();
        let bytes = unread.iter().map(|q| q.record.weight()).sum();
        let state = Arc::new(Mutex::new(State {
            unread,
            outstanding: BTreeMap::new(),
            bytes,
            next_durable: next_seq,
            segments,
            checkpoint,
            max_version,
            background_syncs: 0,
        }));
        let (appends, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.clone(),
            file,
            written,
            allocated: written,
            next_seq,
            options: options.clone(),
            state: Arc::clone(&state),
            unsynced: None,
            unsynced_records: 0,
        };
        std::thread::Builder::new()
            .name("tiered-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| WriteError::Queue(format!("cannot start the log writer thread: {e}")))?;
        let wal = Wal {
            dir,
            appends,
            state,
            checkpointing: Arc::new(Mutex::new(())),
        };
        // Segments already fully confirmed (a crash between a checkpoint and
        // their deletion) go now.
        advance(&wal.dir, &wal.state, &wal.checkpointing);
        Ok(Recovered {
            wal,
            pending,
            max_version,
            corrupt,
        })
    }

    /// How many background syncs [`Fsync::Periodic`] has made.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn background_syncs(&self) -> u64 {
        self.state.lock().background_syncs
    }

    /// Runs `f` (file I/O) on tokio's blocking pool and waits for it.
    pub(crate) async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, WriteError> + Send + 'static,
    ) -> Result<T, WriteError> {
        // The dead-letter calls are public: outside a runtime they get an
        // error, not `spawn_blocking`'s panic.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            WriteError::Queue("the write-ahead log's file work needs a tokio runtime".into())
        })?;
        runtime
            .spawn_blocking(f)
            .await
            .map_err(|e| WriteError::Queue(format!("a log file task failed: {e}")))?
    }

    /// What the file work on the blocking pool needs.
    fn shared(&self) -> (PathBuf, Arc<Mutex<State>>, Arc<Mutex<()>>) {
        (
            self.dir.clone(),
            Arc::clone(&self.state),
            Arc::clone(&self.checkpointing),
        )
    }

    /// Moves the checkpoint forward and deletes confirmed segments.
    async fn advance(&self) -> Result<(), WriteError> {
        let (dir, state, checkpointing) = self.shared();
        Self::blocking(move || {
            advance(&dir, &state, &checkpointing);
            Ok(())
        })
        .await
    }

    fn dead_path(&self, id: &str) -> Option<PathBuf> {
        // Ids come from API callers: digits only, so no path can escape `dead/`.
        (!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
            .then(|| self.dir.join("dead").join(format!("{id}.dead")))
    }
}

impl Queue for Wal {
    fn depth(&self) -> u64 {
        let state = self.state.lock();
        (state.unread.len() + state.outstanding.len()) as u64
    }

    fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    fn append(&self, record: Record) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            self.appends
                .send(Append { record, done })
                .map_err(|_| WriteError::Queue("the log writer thread has stopped".into()))?;
            wait.await
                .map_err(|_| WriteError::Queue("the log writer thread has stopped".into()))?
        })
    }

    fn take(&self, max: usize) -> QueueFuture<'_, Vec<Queued>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let n = max.min(state.unread.len());
            let taken: Vec<Queued> = state.unread.drain(..n).collect();
            state
                .outstanding
                .extend(taken.iter().map(|q| (q.id, q.record.weight())));
            Ok(taken)
        })
    }

    fn confirm(&self, ids: Vec<u64>) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            settle(&self.state, &ids);
            self.advance().await
        })
    }

    fn bury(&self, ids: Vec<u64>, record: Record, reason: String) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            let id = ids.iter().copied().max().unwrap_or_default();
            let mut payload = Vec::new();
            payload.extend_from_slice(&(reason.len() as u32).to_le_bytes());
            payload.extend_from_slice(reason.as_bytes());
            payload.extend_from_slice(&record.encode());
            let dead = self.dir.join("dead");
            let path = dead.join(format!("{id:020}.dead"));
            let (dir, state, checkpointing) = self.shared();
            // One blocking task writes the dead letter and confirms its
            // records. Once started it runs to the end even if this future is
            // dropped (a shutdown that stops waiting), so a record is never
            // left both buried and unconfirmed.
            Self::blocking(move || {
                write_durably(&dead, &path, &frame(id, &payload))
                    .map_err(|e| io_error(&path, e))?;
                settle(&state, &ids);
                advance(&dir, &state, &checkpointing);
                Ok(())
            })
            .await
        })
    }

    fn dead(&self) -> QueueFuture<'_, Vec<Dead>> {
        let dead = self.dir.join("dead");
        Box::pin(Self::blocking(move || {
            let mut names: Vec<String> = fs::read_dir(&dead)
                .map_err(|e| io_error(&dead, e))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".dead"))
                .collect();
            names.sort();
            let mut out = Vec::new();
            for name in names {
                let id = name.trim_end_matches(".dead").to_owned();
                let path = dead.join(&name);
                match fs::read(&path).ok().and_then(|b| parse_dead(&b)) {
                    Some((reason, record)) => out.push(Dead { id, record, reason }),
                    None => {
                        tracing::warn!(file = %path.display(), "write-ahead log: unreadable dead letter skipped")
                    }
                }
            }
            Ok(out)
        }))
    }

    fn revive(&self, id: String) -> QueueFuture<'_, bool> {
        Box::pin(async move {
            let Some(path) = self.dead_path(&id) else {
                return Ok(false);
            };
            let read = path.clone();
            let Some(bytes) = Self::blocking(move || Ok(fs::read(&read).ok())).await? else {
                return Ok(false);
            };
            let (_, record) = parse_dead(&bytes)
                .ok_or_else(|| WriteError::Queue(format!("dead letter {id} is unreadable")))?;
            // Durable in the log before the dead letter goes: a crash in
            // between leaves it in both, never in neither.
            self.append(record).await?;
            Self::blocking(move || fs::remove_file(&path).map_err(|e| io_error(&path, e))).await?;
            Ok(true)
        })
    }

    fn discard(&self, id: String) -> QueueFuture<'_, bool> {
        Box::pin(async move {
            let Some(path) = self.dead_path(&id) else {
                return Ok(false);
            };
            Self::blocking(move || match fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_error(&path, e)),
            })
            .await
        })
    }
}

/// The thread that owns the active segment.
struct Writer {
    dir: PathBuf,
    file: File,
    /// Where the next frame goes in `file`.
    written: u64,
    /// How far `file` is zero-filled (see [Preallocation](self#preallocation)).
    allocated: u64,
    next_seq: u64,
    options: WalOptions,
    state: Arc<Mutex<State>>,
    /// With `Fsync::Periodic`: when the oldest acknowledged, unsynced record
    /// was written, and how many there are.
    unsynced: Option<Instant>,
    unsynced_records: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        let mut buf = Vec::new();
        // Set when a failed write could not be cut off: appending after
        // garbage would hide later records from recovery, so refuse instead.
        let mut broken = false;
        loop {
            let next = match (self.options.fsync, self.unsynced) {
                (Fsync::Periodic { interval, .. }, Some(since)) => {
                    // An interval too long to add up means "by count only".
                    let left = since.checked_add(interval).map_or(Duration::MAX, |due| {
                        due.saturating_duration_since(Instant::now())
                    });
                    match rx.recv_timeout(left) {
                        Ok(append) => Some(append),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            broken |= self.periodic_sync();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                }
                _ => rx.recv().ok(),
            };
            let Some(first) = next else {
                break;
            };
            if broken {
                let _ = first.done.send(Err(WriteError::Queue(
                    "write-ahead log: disabled after a write or background sync it could not complete".into(),
                )));
                continue;
            }
            let mut batch = vec![first];
            let (interval, max) = match self.options.fsync {
                Fsync::Batched {
                    interval,
                    max_records,
                } => (interval, max_records.max(1)),
                Fsync::Periodic { max_records, .. } => (Duration::ZERO, max_records.max(1)),
                Fsync::Never => (Duration::ZERO, 4096),
            };
            let deadline = Instant::now().checked_add(interval);
            while batch.len() < max {
                let left = deadline.map_or(Duration::MAX, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                let next = if left.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(left).ok()
                };
                match next {
                    Some(append) => batch.push(append),
                    None => break,
                }
            }
            buf.clear();
            let first_seq = self.next_seq;
            for (i, append) in batch.iter().enumerate() {
                push_frame(&mut buf, first_seq + i as u64, &append.record);
            }
            let result = self
                .reserve(buf.len() as u64)
                .and_then(|()| self.file.write_all_at(&buf, self.written))
                .and_then(|()| match self.options.fsync {
                    Fsync::Batched { .. } => self.file.sync_data(),
                    Fsync::Periodic { .. } | Fsync::Never => Ok(()),
                });
            if let Err(e) = result {
                // Cut what may have been half written, so the next frames
                // follow good ones; the sequence numbers are simply skipped.
                if self.file.set_len(self.written).is_err() {
                    broken = true;
                }
                self.allocated = self.written;
                let error = WriteError::Queue(format!("write-ahead log: {e}"));
                for append in batch {
                    let _ = append.done.send(Err(error.clone()));
                }
                continue;
            }
            self.written += buf.len() as u64;
            self.next_seq += batch.len() as u64;
            if let Fsync::Periodic {
                interval,
                max_records,
            } = self.options.fsync
            {
                // Synced before it is acknowledged if this batch fills the
                // allowance or the oldest unsynced record is due. (If that
                // sync fails, the batch is still acknowledged — it is written,
                // as `Periodic` promises — and the log refuses what follows.)
                let since = *self.unsynced.get_or_insert_with(Instant::now);
                self.unsynced_records += batch.len();
                if self.unsynced_records >= max_records.max(1) || since.elapsed() >= interval {
                    broken |= self.periodic_sync();
                }
            }
            if self.written >= self.options.segment_bytes {
                // The old segment's unsynced tail would be out of reach of
                // the syncs to come, which go to the new segment.
                if self.unsynced.is_some() {
                    broken |= self.periodic_sync();
                }
                // Before acknowledging: when an append returns, the files
                // are as the next append will find them.
                self.rotate();
            }
            let mut dones = Vec::with_capacity(batch.len());
            {
                let mut state = self.state.lock();
                for (i, append) in batch.into_iter().enumerate() {
                    state.max_version = state.max_version.max(append.record.version);
                    state.bytes += append.record.weight();
                    state.unread.push_back(Queued {
                        id: first_seq + i as u64,
                        record: append.record,
                    });
                    dones.push(append.done);
                }
                state.next_durable = self.next_seq;
            }
            for done in dones {
                let _ = done.send(Ok(()));
            }
        }
        if self.unsynced.is_some() {
            self.periodic_sync();
        }
    }

    /// `fdatasync` for [`Fsync::Periodic`]; true if it failed, which leaves
    /// the log refusing appends (the writes it already acknowledged may
    /// never reach the disk, and a later successful sync would not say so).
    fn periodic_sync(&mut self) -> bool {
        self.unsynced = None;
        let count = std::mem::take(&mut self.unsynced_records);
        match self.file.sync_data() {
            Ok(()) => {
                self.state.lock().background_syncs += 1;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "write-ahead log: background fdatasync failed; acknowledged writes may be lost on a power cut, and the log now refuses appends");
                true
            }
        }
    }

    /// Zero-fills the segment far enough ahead for `len` more bytes, a
    /// whole [`PREALLOCATE`] chunk at a time.
    fn reserve(&mut self, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let end = self.written + len;
        if end <= self.allocated {
            return Ok(());
        }
        let chunk = PREALLOCATE.min(self.options.segment_bytes).max(1);
        let target = end.div_ceil(chunk) * chunk;
        while self.allocated < target {
            let n = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    fn rotate(&mut self) {
        let path = segment_path(&self.dir, self.next_seq);
        match create_segment(&self.dir, &path) {
            Ok((file, len)) => {
                // Give back the zeros the old segment will never use (no
                // sync needed: recovery reads a zero tail as the end anyway).
                let _ = self.file.set_len(self.written);
                self.file = file;
                self.written = len;
                self.allocated = len;
                self.state.lock().segments.push((self.next_seq, path));
            }
            // Keep writing the current segment; rotation is retried after
            // the next batch.
            Err(e) => tracing::warn!(error = %e, "write-ahead log: cannot start a new segment"),
        }
    }
}

/// Deletes confirmed segments and moves the checkpoint forward (file
/// I/O: call it off the async workers, see [`Wal::blocking`]).
fn advance(dir: &Path, state: &Mutex<State>, checkpointing: &Mutex<()>) {
    let _one_at_a_time = checkpointing.lock();
    let (watermark, previous, doomed, max_version) = {
        let mut state = state.lock();
        let low = [
            state.outstanding.first_key_value().map(|(id, _)| *id),
            state.unread.front().map(|q| q.id),
            Some(state.next_durable),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(state.next_durable);
        let watermark = low.saturating_sub(1);
        if watermark <= state.checkpoint {
            return;
        }
        let previous = std::mem::replace(&mut state.checkpoint, watermark);
        let mut doomed = Vec::new();
        while state.segments.len() > 1 && state.segments[1].0 <= watermark + 1 {
            doomed.push(state.segments.remove(0));
        }
        (watermark, previous, doomed, state.max_version)
    };
    // Checkpoint first: a crash between the two leaves segments that are
    // skipped on recovery, never a checkpoint pointing past live records.
    // If it cannot be written, nothing is deleted and the next call
    // tries again.
    if let Err(e) = write_checkpoint(dir, watermark, max_version, !doomed.is_empty()) {
        tracing::warn!(error = %e, "write-ahead log: cannot write the checkpoint");
        let mut state = state.lock();
        if state.checkpoint == watermark {
            state.checkpoint = previous;
        }
        // They were the oldest: back at the front, in order.
        for segment in doomed.into_iter().rev() {
            state.segments.insert(0, segment);
        }
        return;
    }
    for (_, path) in doomed {
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(segment = %path.display(), error = %e, "write-ahead log: cannot delete a confirmed segment");
        }
    }
}

/// Marks `ids` confirmed: their weight leaves the queue.
fn settle(state: &Mutex<State>, ids: &[u64]) {
    let mut state = state.lock();
    for id in ids {
        if let Some(weight) = state.outstanding.remove(id) {
            state.bytes = state.bytes.saturating_sub(weight);
        }
    }
}

fn io_error(path: &Path, e: io::Error) -> WriteError {
    WriteError::Queue(format!("write-ahead log {}: {e}", path.display()))
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("wal-{first_seq:020}.log"))
}

/// Creates (or opens) a segment; returns it with its length, where the
/// writer goes on. A file of that name can already exist: an empty segment a
/// crash left right after a rotation, or one whose only frames recovery could
/// not read (a newer format). Those frames are kept, never overwritten.
fn create_segment(dir: &Path, path: &Path) -> Result<(File, u64), WriteError> {
    // Not `append`: the writer writes at its own offset, over the zeros it
    // filled in ahead (see [Preallocation](self#preallocation)).
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    // The new file's name must survive a crash too.
    sync_dir(dir).map_err(|e| io_error(dir, e))?;
    Ok((file, len))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// `len | crc | payload`.
fn frame_raw(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Appends the frame of `record` at `seq` to `buf`, encoding it in place:
/// the writer thread is the log's one serial step, so it makes no
/// allocation or copy per record.
fn push_frame(buf: &mut Vec<u8>, seq: u64, record: &Record) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEAD]);
    buf.extend_from_slice(&seq.to_le_bytes());
    record.encode_into(buf);
    let payload = &buf[start + FRAME_HEAD..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + FRAME_HEAD].copy_from_slice(&crc);
}

/// A frame whose payload is `seq | body`.
fn frame(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = seq.to_le_bytes().to_vec();
    payload.extend_from_slice(body);
    frame_raw(&payload)
}

/// The payload of the frame at the start of `bytes`, and the frame's length.
fn next_frame(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = usize::try_from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(FRAME_HEAD..FRAME_HEAD.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, FRAME_HEAD + len))
}

fn split_seq(payload: &[u8]) -> Option<(u64, &[u8])> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some((seq, &payload[8..]))
}

/// The good frames at the start of a segment, how many bytes they span, and
/// how many frames were intact (CRC) but unreadable — skipped one by one,
/// since an intact frame's length can be trusted.
fn parse_frames(bytes: &[u8]) -> (Vec<(u64, Record)>, usize, u64) {
    let (mut frames, mut at, mut unreadable) = (Vec::new(), 0, 0);
    while at < bytes.len() {
        // Zeros where a frame's length would be: the preallocated rest of
        // the segment, never written.
        if bytes[at..].starts_with(&[0; 4]) {
            break;
        }
        let Some((payload, len)) = next_frame(&bytes[at..]) else {
            break;
        };
        match split_seq(payload).and_then(|(seq, body)| Some((seq, Record::decode(body)?))) {
            Some(frame) => frames.push(frame),
            None => unreadable += 1,
        }
        at += len;
    }
    (frames, at, unreadable)
}

/// What recovery reads from one segment.
struct Segment {
    /// Every intact frame, in file order.
    frames: Vec<(u64, Record)>,
    /// Just past the last intact frame: what follows is zeros, or a write a
    /// crash interrupted, or corruption — never an intact frame.
    end: usize,
    /// Intact frames that could not be decoded (see [`parse_frames`]).
    unreadable: u64,
    /// Damaged stretches with intact frames after them, skipped.
    damaged: u64,
}

/// Every intact frame of a segment whose first sequence number is
/// `first_seq`. Where a frame is damaged (a bad length or CRC) with data
/// after it, the frames after it are looked for rather than given up: a
/// damaged byte in the middle of the last segment must not cost the
/// acknowledged records behind it, as taking it for a torn tail and cutting
/// there would. The next intact frame is the first offset whose sequence
/// number is in range (above every one read so far, and no further ahead
/// than the segment has room for frames) and whose CRC checks.
fn parse_segment(bytes: &[u8], first_seq: u64) -> Segment {
    let mut out = Segment {
        frames: Vec::new(),
        end: 0,
        unreadable: 0,
        damaged: 0,
    };
    let mut at = 0;
    loop {
        let (frames, len, unreadable) = parse_frames(&bytes[at..]);
        out.frames.extend(frames);
        out.unreadable += unreadable;
        at += len;
        out.end = at;
        if bytes[at..].iter().all(|&b| b == 0) {
            return out;
        }
        let above = out.frames.iter().map(|f| f.0).max();
        let lower = above.map_or(first_seq, |s| s.saturating_add(1)).max(1);
        match next_intact_frame(bytes, at + 1, lower) {
            Some(next) => {
                out.damaged += 1;
                at = next;
            }
            None => return out,
        }
    }
}

/// The offset, at or after `from`, of the first intact frame whose sequence
/// number is at least `lower` and within the frames `bytes` could hold.
fn next_intact_frame(bytes: &[u8], from: usize, lower: u64) -> Option<usize> {
    let smallest = FRAME_HEAD + 8;
    let upper = lower.saturating_add((bytes.len() / smallest) as u64);
    let last = bytes.len().checked_sub(smallest)?;
    (from..=last).find(|&j| {
        let seq = bytes
            .get(j + FRAME_HEAD..j + smallest)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        seq.is_some_and(|seq| (lower..=upper).contains(&seq))
            && next_frame(&bytes[j..]).is_some_and(|(payload, _)| payload.len() >= 8)
    })
}

fn parse_dead(bytes: &[u8]) -> Option<(String, Record)> {
    let (payload, len) = next_frame(bytes)?;
    if len != bytes.len() {
        return None;
    }
    let (_, body) = split_seq(payload)?;
    let reason_len = usize::try_from(u32::from_le_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    let reason = String::from_utf8(body.get(4..4usize.checked_add(reason_len)?)?.to_vec()).ok()?;
    let record = Record::decode(&body[4 + reason_len..])?;
    Some((reason, record))
}

/// The checkpoint's watermark and version high-water mark (zero if a
/// checkpoint from before the high-water mark was kept has none).
fn read_checkpoint(dir: &Path) -> (u64, u64) {
    fs::read(dir.join("checkpoint"))
        .ok()
        .and_then(|b| {
            let (payload, _) = next_frame(&b)?;
            let word = |at: usize| -> Option<u64> {
                Some(u64::from_le_bytes(
                    payload.get(at..at + 8)?.try_into().ok()?,
                ))
            };
            Some((word(0)?, word(8).unwrap_or(0)))
        })
        .unwrap_or((0, 0))
}

/// Writes the checkpoint; `durable` (segments are about to be deleted)
/// syncs it first, so it — and the version high-water mark in it — outlives
/// them even through a power cut.
fn write_checkpoint(dir: &Path, watermark: u64, max_version: u64, durable: bool) -> io::Result<()> {
    let mut payload = watermark.to_le_bytes().to_vec();
    payload.extend_from_slice(&max_version.to_le_bytes());
    let bytes = frame_raw(&payload);
    if durable {
        return write_durably(dir, &dir.join("checkpoint"), &bytes);
    }
    // No fsync otherwise: a checkpoint lost in a power cut only means
    // replaying records the store already has (harmless: the version guard),
    // and the segments it would have let go still carry their versions.
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(tmp, dir.join("checkpoint"))
}

/// The highest sequence number a dead letter in `dir/dead` is named by (0 if
/// none).
fn highest_dead_letter(dir: &Path) -> u64 {
    fs::read_dir(dir.join("dead"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".dead")?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::Codec;

    fn record(key: &str, version: u64) -> Record {
        Record {
            at_ms: 1,
            version,
            codec: Codec::MessagePack,
            key: key.into(),
            value: Some(vec![version as u8]),
            invalidate: vec![],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tiered-wal-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A fresh log directory, and options rotating every `segment_bytes`.
    fn small_segments(name: &str, segment_bytes: u64) -> (PathBuf, WalOptions) {
        let dir = temp_dir(name);
        let opts = WalOptions {
            segment_bytes,
            ..WalOptions::new(&dir)
        };
        (dir, opts)
    }

    #[test]
    fn frames_built_in_place_are_the_frames_recovery_reads() {
        let mut tagged = record("k", 7);
        tagged.invalidate = vec!["t1".into(), "t2".into()];
        let mut buf = b"earlier".to_vec();
        push_frame(&mut buf, 41, &record("a", 1));
        push_frame(&mut buf, 42, &tagged);
        let mut expected = b"earlier".to_vec();
        expected.extend(frame(41, &record("a", 1).encode()));
        expected.extend(frame(42, &tagged.encode()));
        assert_eq!(buf, expected);
        let (frames, len, unreadable) = parse_frames(&buf[7..]);
        assert_eq!((len, unreadable), (buf.len() - 7, 0));
        assert_eq!(frames, vec![(41, record("a", 1)), (42, tagged)]);
    }

    #[tokio::test]
    async fn acknowledged_records_survive_a_reopen_and_confirmed_ones_do_not() {
        let (dir, opts) = small_segments("reopen", 200);
        {
            let wal = Wal::open(&opts).unwrap().wal;
            for v in 1..=20 {
                wal.append(record(&format!("k{v}"), v)).await.unwrap();
            }
            let taken = wal.take(5).await.unwrap();
            assert_eq!(taken.len(), 5);
            wal.confirm(taken.iter().map(|q| q.id).collect())
                .await
                .unwrap();
        }
        // Rotated segments gave back their unused zeros; a crash between a
        // rotation and that leaves a zero tail, which is not corruption.
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() > 2);
        for (_, path) in &segments[..segments.len() - 1] {
            let bytes = fs::read(path).unwrap();
            assert_eq!(parse_frames(&bytes).1, bytes.len(), "{}", path.display());
        }
        let (_, padded) = &segments[segments.len() - 2];
        let len = fs::metadata(padded).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(padded)
            .unwrap()
            .set_len(len + 300)
            .unwrap();
        let again = Wal::open(&opts).unwrap();
        assert_eq!(again.corrupt, 0);
        assert_eq!(again.pending, 15);
        assert_eq!(again.max_version, 20);
        let rest = again.wal.take(100).await.unwrap();
        let versions: Vec<u64> = rest.iter().map(|q| q.record.version).collect();
        assert_eq!(versions, (6..=20).collect::<Vec<_>>());
        // Confirmed segments are gone: 20 records of ~50 bytes in 200-byte
        // segments made several, and the first ones held only confirmed records.
        again
            .wal
            .confirm(rest.iter().map(|q| q.id).collect())
            .await
            .unwrap();
        assert!(list_segments(&dir).unwrap().len() <= 2);
        drop(again);
        // Nothing left to replay, but versions still start above the last.
        let empty = Wal::open(&opts).unwrap();
        assert_eq!(empty.pending, 0);
        assert_eq!(empty.max_version, 20);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn dead_letter_calls_outside_a_runtime_are_an_error_not_a_panic() {
        let dir = temp_dir("no-runtime");
        let wal = Wal::open(&WalOptions::new(&dir)).unwrap().wal;
        // A hand-polled future: no tokio runtime around it.
        let mut listing = wal.dead();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match listing.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Err(WriteError::Queue(msg))) => {
                assert!(msg.contains("tokio runtime"), "{msg}")
            }
            other => panic!(
                "expected an error, got {:?}",
                other.map(|r| r.map(|d| d.len()))
            ),
        }
        drop(listing);
        drop(wal);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn confirmations_finishing_together_leave_one_sound_checkpoint() {
        // Each confirmation writes the checkpoint (durably when it deletes
        // segments) on the blocking pool; many at once must leave a
        // checkpoint that reads back, so a reopen replays nothing.
        let (dir, opts) = small_segments("concurrent-confirm", 300);
        {
            let wal = Arc::new(Wal::open(&opts).unwrap().wal);
            for v in 1..=200 {
                wal.append(record(&format!("k{v}"), v)).await.unwrap();
            }
            let taken = wal.take(200).await.unwrap();
            assert_eq!(taken.len(), 200);
            let tasks: Vec<_> = taken
                .chunks(4)
                .map(|chunk| {
                    let wal = Arc::clone(&wal);
                    let ids: Vec<u64> = chunk.iter().map(|q| q.id).collect();
                    tokio::spawn(async move { wal.confirm(ids).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            assert_eq!(wal.depth(), 0);
        }
        assert_eq!(read_checkpoint(&dir).1, 200, "the checkpoint reads back");
        let again = Wal::open(&opts).unwrap();
        assert_eq!(again.pending, 0);
        assert_eq!(again.max_version, 200);
        assert!(list_segments(&dir).unwrap().len() <= 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn periodic_sync_runs_on_its_timer_and_at_its_record_cap() {
        let dir = temp_dir("periodic");
        let opts = WalOptions {
            fsync: Fsync::Periodic {
                interval: Duration::from_millis(50),
                max_records: 10,
            },
            ..WalOptions::new(&dir)
        };
        let wal = Wal::open(&opts).unwrap().wal;
        // Acknowledged before any sync: one append, then the timer.
        wal.append(record("a", 1)).await.unwrap();
        assert_eq!(wal.take(10).await.unwrap().len(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal.background_syncs() == 0 {
            assert!(Instant::now() < deadline, "no sync after the interval");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Idle: no further syncs without new writes.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(wal.background_syncs(), 1);
        drop(wal);
        assert_eq!(Wal::open(&opts).unwrap().pending, 1);

        // With a timer that never fires, the tenth unsynced record is
        // synced before it is acknowledged.
        let dir2 = temp_dir("periodic-cap");
        let wal = Wal::open(&WalOptions {
            fsync: Fsync::Periodic {
                // Too long to add to an instant: "by count only".
                interval: Duration::MAX,
                max_records: 10,
            },
            ..WalOptions::new(&dir2)
        })
        .unwrap()
        .wal;
        for v in 1..=9 {
            wal.append(record("b", v)).await.unwrap();
        }
        assert_eq!(wal.background_syncs(), 0);
        wal.append(record("b", 10)).await.unwrap();
        assert_eq!(wal.background_syncs(), 1);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&dir2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_across_preallocated_segments_are_recovered_in_order() {
        let (dir, opts) = small_segments("concurrent-appends", 4096);
        let wal = Arc::new(Wal::open(&opts).unwrap().wal);
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move {
                    for i in 0..100u64 {
                        wal.append(record(&format!("t{t}"), t * 1000 + i))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // Acknowledged in sequence order, with each task's own in its order.
        let taken = wal.take(10_000).await.unwrap();
        assert_eq!(taken.len(), 1600);
        assert!(taken.windows(2).all(|w| w[0].id < w[1].id));
        drop(wal);
        assert!(list_segments(&dir).unwrap().len() > 10, "the test rotated");
        let recovered = Wal::open(&opts).unwrap();
        assert_eq!((recovered.pending, recovered.corrupt), (1600, 0));
        let again = recovered.wal.take(10_000).await.unwrap();
        let ids = |q: &[Queued]| {
            q.iter()
                .map(|q| (q.id, q.record.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&again), ids(&taken));
        for t in 0..16u64 {
            let versions: Vec<u64> = again
                .iter()
                .filter(|q| q.record.key == format!("t{t}"))
                .map(|q| q.record.version)
                .collect();
            assert_eq!(versions, (0..100).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn zeros_end_a_segments_records_and_data_after_them_is_cut_or_counted() {
        let (dir, opts) = small_segments("zeros", 200);
        {
            let wal = Wal::open(&opts).unwrap().wal;
            for v in 1..=10 {
                wal.append(record(&format!("k{v}"), v)).await.unwrap();
            }
        }
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() > 2);
        let (first, last) = (&segments[0].1, &segments[segments.len() - 1].1);
        // A zero length followed by data: after a segment's records, never
        // the log's own doing.
        for path in [first, last] {
            let end = parse_frames(&fs::read(path).unwrap()).1;
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[0; 8], end as u64).unwrap();
            file.write_all_at(b"junk", end as u64 + 8).unwrap();
        }
        let recovered = Wal::open(&opts).unwrap();
        // In an older segment it is corruption; at the end of the last one,
        // a write a crash interrupted, cut off.
        assert_eq!((recovered.corrupt, recovered.pending), (1, 10));
        let bytes = fs::read(last).unwrap();
        assert_eq!(parse_frames(&bytes).1, bytes.len());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_damaged_frame_mid_segment_costs_only_itself() {
        for last in [true, false] {
            let dir = temp_dir(if last {
                "damaged-last"
            } else {
                "damaged-older"
            });
            let opts = WalOptions::new(&dir);
            {
                let wal = Wal::open(&opts).unwrap().wal;
                for v in 1..=10 {
                    wal.append(record(&format!("k{v}"), v)).await.unwrap();
                }
            }
            if !last {
                // A later open starts a new segment: the damaged one is older.
                drop(Wal::open(&opts).unwrap());
            }
            let (_, path) = list_segments(&dir).unwrap().remove(0);
            let bytes = fs::read(&path).unwrap();
            let (frames, _, _) = parse_frames(&bytes);
            assert_eq!(frames.len(), 10);
            // One byte flipped inside the third frame, then its length
            // zeroed in the fifth: two damaged frames, eight intact ones.
            let offsets: Vec<usize> = {
                let mut at = 0;
                (0..10)
                    .map(|_| {
                        let here = at;
                        at += next_frame(&bytes[at..]).unwrap().1;
                        here
                    })
                    .collect()
            };
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[bytes[offsets[2] + 20] ^ 0xFF], (offsets[2] + 20) as u64)
                .unwrap();
            file.write_all_at(&[0; 4], offsets[4] as u64).unwrap();
            for _ in 0..2 {
                let recovered = Wal::open(&opts).unwrap();
                assert_eq!(recovered.corrupt, 2, "last segment: {last}");
                let keys: Vec<String> = recovered
                    .wal
                    .take(20)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|q| q.record.key)
                    .collect();
                let expected: Vec<String> = [1, 2, 4, 6, 7, 8, 9, 10]
                    .iter()
                    .map(|v| format!("k{v}"))
                    .collect();
                assert_eq!(keys, expected, "last segment: {last}");
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn an_absurd_sequence_number_on_disk_is_refused_not_overflowed() {
        let dir = temp_dir("absurd-seq");
        let opts = WalOptions::new(&dir);
        drop(Wal::open(&opts).unwrap());
        fs::write(dir.join("dead").join(format!("{}.dead", u64::MAX)), b"x").unwrap();
        let Err(e) = Wal::open(&opts) else {
            panic!("opened a log whose next sequence number overflows");
        };
        assert!(e.to_string().contains("corrupt"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_later_appends_survive() {
        let dir = temp_dir("torn");
        let opts = WalOptions::new(&dir);
        {
            let wal = Wal::open(&opts).unwrap().wal;
            wal.append(record("a", 1)).await.unwrap();
            wal.append(record("b", 2)).await.unwrap();
        }
        // Simulate a crash in the middle of writing the second frame: its
        // last bytes never reached the disk (zeros, as the segment was
        // preallocated).
        let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
        let bytes = fs::read(&path).unwrap();
        let (frames, end, _) = parse_frames(&bytes);
        assert_eq!(frames.len(), 2);
        assert!(
            bytes.len() > end,
            "the segment is zero-filled past its records"
        );
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[0; 3], end as u64 - 3)
            .unwrap();
        {
            let recovered = Wal::open(&opts).unwrap();
            assert_eq!(recovered.corrupt, 0);
            assert_eq!(recovered.pending, 1);
            assert_eq!(recovered.corrupt, 0);
            recovered.wal.append(record("c", 3)).await.unwrap();
        }
        let recovered = Wal::open(&opts).unwrap();
        let keys: Vec<String> = recovered
            .wal
            .take(10)
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.record.key)
            .collect();
        assert_eq!(keys, ["a", "c"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_revived_and_discarded() {
        let dir = temp_dir("dead");
        let wal = Wal::open(&WalOptions::new(&dir)).unwrap().wal;
        wal.append(record("a", 1)).await.unwrap();
        wal.append(record("b", 2)).await.unwrap();
        let taken = wal.take(10).await.unwrap();
        for q in taken {
            wal.bury(vec![q.id], q.record, "constraint".into())
                .await
                .unwrap();
        }
        let dead = wal.dead().await.unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].reason, "constraint");
        assert!(!wal.revive("../../etc/passwd".into()).await.unwrap());
        assert!(wal.revive(dead[0].id.clone()).await.unwrap());
        assert!(wal.discard(dead[1].id.clone()).await.unwrap());
        assert!(!wal.discard(dead[1].id.clone()).await.unwrap());
        assert!(wal.dead().await.unwrap().is_empty());
        let back = wal.take(10).await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].record.key, "a");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn new_sequence_numbers_start_above_every_dead_letter() {
        // A power cut can take a log's unsynced tail with sequence numbers a
        // dead letter is already named by; here, the log is simply gone.
        let dir = temp_dir("dead-seq");
        let opts = WalOptions::new(&dir);
        {
            let wal = Wal::open(&opts).unwrap().wal;
            wal.bury(vec![500], record("x", 1), "refused".into())
                .await
                .unwrap();
        }
        for (_, segment) in list_segments(&dir).unwrap() {
            fs::remove_file(segment).unwrap();
        }
        let wal = Wal::open(&opts).unwrap().wal;
        wal.append(record("y", 2)).await.unwrap();
        let taken = wal.take(1).await.unwrap();
        assert!(taken[0].id > 500, "{}", taken[0].id);
        wal.bury(vec![taken[0].id], taken[0].record.clone(), "refused".into())
            .await
            .unwrap();
        assert_eq!(
            wal.dead().await.unwrap().len(),
            2,
            "a dead letter was overwritten"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

//! The maildir-style durable queue: one file per message (envelope + message), written aside, fsynced, then
//! linked or renamed into queue/ and queue/ fsynced.
//!
//! Layout under `queue.dir`: `tmp/` (messages being written, when they need a name), `queue/` (committed
//! messages, one file named by its id), `corrupt/` (files `scan` could not parse, kept for a human to inspect).
//! A new message is written as an unnamed file in queue/ (O_TMPFILE) and linked as queue/ID once fsynced: no
//! tmp/ entry is created and removed, so each message changes one folder block fewer in each of its two
//! journal commits (about 4 KB less written per message on ext4). Where O_TMPFILE or /proc is missing, it is
//! written as tmp/ID and renamed, as maildir does. Rewrites of a queued message (`update`) go through tmp/.
//! In the relay, a new message is preferably written over a delivered message's file kept as
//! tmp/spare-OLD, then renamed to queue/ID (`spares.rs`: one journal commit per message instead of two).
//!
//! The file format is described in `format.rs`, the group commit of queue/ in `dirsync.rs`.
//!
//! Usage accounting (`usage()`) is per process: commits made by another process (`picorelay sendmail`)
//! are counted when this process next calls `scan`.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys;

mod dirsync;
pub mod format;
pub mod lock;
mod spares;

use dirsync::{sync_dir, DirSync};
pub use format::format_header;
use format::{length_offset, length_value, read_header, Header};
use spares::Spares;

/// Longest id `valid_id` accepts (ours are 30 characters).
const MAX_ID: usize = 64;
/// Files in tmp/ untouched for this long are leftovers of a crash (as maildir does: 36 hours). Younger ones
/// may belong to another process writing into the same spool (`picorelay sendmail`) and are left alone.
pub const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);
/// Buffer size for writing a message.
const WRITE_BUF: usize = 64 * 1024;
/// Directories are created 0750, files 0640 (the umask may narrow both).
const DIR_MODE: u32 = 0o750;
const FILE_MODE: u32 = 0o640;

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Not delivered yet (maybe after transient failures).
    Pending,
    /// Accepted by the smarthost.
    Delivered,
    /// Refused permanently or expired.
    Failed,
}

impl RcptState {
    fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<RcptState> {
        match s {
            "pending" => Some(RcptState::Pending),
            "delivered" => Some(RcptState::Delivered),
            "failed" => Some(RcptState::Failed),
            _ => None,
        }
    }
}

/// One envelope recipient with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Address to deliver to, `local@domain`.
    pub addr: String,
    /// The address as received, before alias rewriting.
    pub orig: Option<String>,
    /// Delivery state.
    pub state: RcptState,
    /// Last smarthost reply or failure reason.
    pub reply: Option<String>,
}

/// Everything known about a queued message besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Filled by the spool on commit/read; ignored by `begin`.
    pub id: String,
    /// Envelope sender, "" = null sender.
    pub sender: String,
    /// Recipients, in the order given.
    pub recipients: Vec<Recipient>,
    /// "192.0.2.7" or "local" (sendmail).
    pub client: String,
    /// EHLO/HELO name given by the client.
    pub helo: String,
    /// Unix seconds.
    pub arrival: u64,
    /// AUTH identity, when the client authenticated.
    pub auth_user: Option<String>,
    /// The message has 8-bit content.
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix seconds; 0 = now.
    pub next_attempt: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// This message is itself a bounce (never bounce a bounce).
    pub bounced: bool,
}

impl Envelope {
    /// Envelope::new is a message arriving now from `client`, every recipient
    /// pending, never tried; callers set what else they know with `..`.
    pub fn new(sender: &str, recipients: &[String], client: &str, helo: &str) -> Envelope {
        Envelope {
            id: String::new(),
            sender: sender.to_string(),
            recipients: recipients
                .iter()
                .map(|r| Recipient {
                    addr: r.clone(),
                    orig: None,
                    state: RcptState::Pending,
                    reply: None,
                })
                .collect(),
            client: client.to_string(),
            helo: helo.to_string(),
            arrival: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            auth_user: None,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            bounced: false,
        }
    }
}

/// Everything that can go wrong in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolError {
    /// The spool holds `queue.max_size` bytes or more.
    Full,
    /// The disk (or the user's quota) is full: ENOSPC / EDQUOT.
    NoSpace,
    /// Any other I/O problem: what failed and on which path.
    Io(String),
    /// No queued message with this id.
    NotFound(String),
    /// The id is not a valid message id (could name a path).
    BadId(String),
    /// A spool file could not be parsed: why.
    Corrupt(String),
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Full => write!(
                f,
                "spool full: queue.max_size reached; let the queue drain, delete messages or raise max_size"
            ),
            SpoolError::NoSpace => write!(f, "no space left on the spool's disk; free some space"),
            SpoolError::Io(what) => write!(f, "{what}"),
            SpoolError::NotFound(id) => write!(f, "no queued message with id {id}"),
            SpoolError::BadId(id) => {
                write!(f, "invalid message id {id:?}: ids are letters and digits only")
            }
            SpoolError::Corrupt(why) => write!(f, "corrupt spool file: {why}"),
        }
    }
}

impl std::error::Error for SpoolError {}

/// Maps an I/O error to NoSpace (ENOSPC, EDQUOT) or Io naming what failed and where.
fn io_err(e: &io::Error, what: &str, path: &Path) -> SpoolError {
    match e.raw_os_error() {
        Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => SpoolError::NoSpace,
        _ => SpoolError::Io(format!("{what} {}: {e}", path.display())),
    }
}

/// True for a well-formed message id: 1 to 64 ASCII letters or digits, so an id can never name a path
/// ("", "..", "a/b" are all invalid). Check every id that comes from a user with it.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

static ID_COUNTER: AtomicU32 = AtomicU32::new(0);
static ID_LAST_MICROS: AtomicU64 = AtomicU64::new(0);

/// new_id returns a fresh id: 14 hex digits of unix microseconds, 8 of the pid, 8 of a per-process counter.
/// Fixed width, so string order is arrival order; the pid makes ids unique across processes sharing the spool.
fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        & 0x00FF_FFFF_FFFF_FFFF;
    // Never step back within this process, so ids stay ordered even if the clock is set back.
    let micros = ID_LAST_MICROS.fetch_max(now, Ordering::SeqCst).max(now);
    let n = ID_COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{micros:014x}{:08x}{n:08x}", std::process::id())
}

/// Creates `dir` (0750) when missing; true when it was created.
fn ensure_dir(dir: &Path) -> Result<bool, SpoolError> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(io_err(&e, "cannot create directory", dir)),
    }
}

/// Creates a new file exclusively (O_EXCL), mode 0640.
fn create_new(path: &Path) -> Result<File, SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| io_err(&e, "cannot create", path))?;
    // Held until the file is closed: `clean_tmp` leaves a locked file alone, however old, so a
    // `sendmail` fed slowly for hours keeps the message it is writing.
    let _ = sys::try_lock(&file);
    Ok(file)
}

/// in_use tells whether another open file holds the lock `create_new` takes on a file.
fn in_use(path: &Path) -> bool {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    match opened {
        Ok(f) => !sys::try_lock(&f).unwrap_or(true),
        Err(_) => false,
    }
}

/// Subtracts from the usage counter without wrapping below zero.
fn usage_sub(usage: &AtomicU64, n: u64) {
    let _ = usage.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
        Some(u.saturating_sub(n))
    });
}

/// A queued message's bytes, from its first to its last (`Spool::open_message`).
pub type Message = io::Take<BufReader<File>>;

/// The durable queue. Send + Sync: share it through an Arc.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    max_size: u64,
    usage: Arc<AtomicU64>,
    /// Group commit for queue/: renames in (commit, update) and unlinks (delete).
    queue_sync: Arc<DirSync>,
    /// New messages are written unnamed in queue/ (see the module comment); false after the filesystem or the
    /// system refused it once.
    unnamed: Arc<AtomicBool>,
    /// Delivered messages' files kept for new messages (the relay only).
    spares: Spares,
    /// Messages being written now (Incomings alive).
    writing: Arc<AtomicUsize>,
}

impl Spool {
    /// Opens (creating when missing) the spool; removes tmp/ leftovers older than TMP_MAX_AGE (younger ones may
    /// be another process's message in progress); computes current usage. `max_size` 0 = no limit.
    pub fn open(dir: &Path, max_size: u64) -> Result<Spool, SpoolError> {
        let spool = Spool {
            dir: dir.to_path_buf(),
            tmp: dir.join("tmp"),
            queue: dir.join("queue"),
            corrupt: dir.join("corrupt"),
            max_size,
            usage: Arc::new(AtomicU64::new(0)),
            queue_sync: Arc::new(DirSync::new(&dir.join("queue"))),
            // linkat names an unnamed file through /proc/self/fd.
            unnamed: Arc::new(AtomicBool::new(Path::new("/proc/self/fd").is_dir())),
            spares: Spares::default(),
            writing: Arc::new(AtomicUsize::new(0)),
        };
        let mut created = ensure_dir(dir)?;
        for sub in [&spool.tmp, &spool.queue, &spool.corrupt] {
            created |= ensure_dir(sub)?;
        }
        if created {
            sync_dir(dir)?;
        }
        spool.clean_tmp(TMP_MAX_AGE)?;
        spool.usage.store(spool.queued_size()?, Ordering::SeqCst);
        Ok(spool)
    }

    /// The spool's top directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// recycle_delivered removes the spares an earlier run left and, when `on`, makes `delete_delivered` keep
    /// a few delivered messages' files for new messages to overwrite (see spares.rs). For the relay, the one
    /// process that delivers; call it as the user the relay runs as.
    pub fn recycle_delivered(&self, on: bool) {
        self.spares.enable(&self.tmp, on);
    }

    /// Bytes of queued message files, as this process last knew them (begin refuses new mail past max_size).
    /// Approximate by design: `scan` recounts from disk, so commits by other processes (or racing a scan)
    /// are reflected after the next scan.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::SeqCst)
    }

    /// Removes files in tmp/ not modified for `max_age` (crash leftovers); returns how many. Called by `open`;
    /// a long-running relay may call it now and then.
    pub fn clean_tmp(&self, max_age: Duration) -> Result<usize, SpoolError> {
        let entries = fs::read_dir(&self.tmp).map_err(|e| io_err(&e, "cannot list", &self.tmp))?;
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&e, "cannot list", &self.tmp))?;
            let path = entry.path();
            // A spare is the relay's, which may be about to overwrite it; the relay removes leftovers itself.
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(spares::PREFIX)
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            if meta.is_file() && age >= max_age && !in_use(&path) {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        log::info!("spool: removed leftover {}", path.display());
                        removed += 1;
                    }
                    Err(e) => log::warn!("spool: cannot remove leftover {}: {e}", path.display()),
                }
            }
        }
        Ok(removed)
    }

    /// Sum of the sizes of the message files in queue/.
    fn queued_size(&self) -> Result<u64, SpoolError> {
        let mut total = 0u64;
        for (_, path) in self.queued_ids()? {
            if let Ok(meta) = fs::metadata(&path) {
                total = total.saturating_add(meta.len());
            }
        }
        Ok(total)
    }

    /// Ids of the queued messages, sorted (oldest first). Cheap: only file names are read; the
    /// delivery runner lists queue/ with it every second to find messages from other processes.
    pub fn ids(&self) -> Result<Vec<String>, SpoolError> {
        Ok(self.queued_ids()?.into_iter().map(|(id, _)| id).collect())
    }

    /// queue_stamp is queue/'s modification time: it changes with every name added to or removed
    /// from the folder. None when it cannot be read.
    pub fn queue_stamp(&self) -> Option<SystemTime> {
        fs::metadata(&self.queue).and_then(|m| m.modified()).ok()
    }

    /// Ids (file names that are valid ids) and paths in queue/, sorted by id.
    fn queued_ids(&self) -> Result<Vec<(String, PathBuf)>, SpoolError> {
        let entries =
            fs::read_dir(&self.queue).map_err(|e| io_err(&e, "cannot list", &self.queue))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&e, "cannot list", &self.queue))?;
            if let Some(name) = entry.file_name().to_str() {
                if valid_id(name) {
                    ids.push((name.to_string(), entry.path()));
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The path of a queued message, after checking the id cannot name anything else.
    fn queue_path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId(id.to_string()));
        }
        Ok(self.queue.join(id))
    }

    /// Opens queue/ID; NotFound when there is no such message, Corrupt when it is not a plain
    /// file. Whatever lands in queue/ under an id-like name is opened without following a
    /// symbolic link (a spare made of one would be written through it) and without waiting (a
    /// FIFO would block the scan, and with it the whole queue, until someone wrote to it).
    fn open_queued(&self, id: &str) -> Result<(File, PathBuf), SpoolError> {
        let path = self.queue_path(id)?;
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(SpoolError::Corrupt(format!(
                    "{}: a symbolic link, not a message file",
                    path.display()
                )))
            }
            Err(e) => return Err(io_err(&e, "cannot open", &path)),
        };
        let meta = file
            .metadata()
            .map_err(|e| io_err(&e, "cannot stat", &path))?;
        if !meta.is_file() {
            return Err(SpoolError::Corrupt(format!(
                "{}: not a plain file",
                path.display()
            )));
        }
        Ok((file, path))
    }

    /// A fresh id and a new tmp/ file of that name.
    fn fresh(&self) -> Result<(String, PathBuf, File), SpoolError> {
        loop {
            // A clash with queue/ is caught by the rename at commit, which
            // never replaces a file: no lookup in queue/ per message here.
            let id = new_id();
            let path = self.tmp.join(&id);
            match create_new(&path) {
                Ok(f) => return Ok((id, path, f)),
                Err(_) if path.exists() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A fresh id and where its message is written until the commit: unnamed in queue/ when the filesystem
    /// allows it, else tmp/ID.
    fn fresh_aside(&self) -> Result<(String, Aside, File), SpoolError> {
        if self.unnamed.load(Ordering::Relaxed) {
            let id = new_id();
            match sys::open_unnamed(&self.queue, FILE_MODE) {
                Ok(file) => {
                    let dest = self.queue.join(&id);
                    return Ok((id, Aside::Unnamed(dest), file));
                }
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOSYS)
                    ) {
                        log::debug!(
                            "spool: {} takes no unnamed files ({e}); writing under tmp/",
                            self.queue.display()
                        );
                        self.unnamed.store(false, Ordering::Relaxed);
                    }
                    // Anything else (permissions, no space) is tried again through tmp/, which reports it.
                }
            }
        }
        let (id, path, file) = self.fresh()?;
        Ok((id, Aside::Named(path), file))
    }

    /// A fresh id and a spare file to overwrite with its message, when one is ready.
    fn reuse(&self) -> Option<(String, Aside, File)> {
        let spare = self.spares.take(&self.queue_sync)?;
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&spare.path);
        match opened {
            Ok(file) => {
                let id = new_id();
                log::debug!("spool: {id} overwrites {}", spare.path.display());
                Some((id, Aside::Spare(spare.path), file))
            }
            Err(e) => {
                log::debug!("spool: cannot reuse {}: {e}", spare.path.display());
                let _ = fs::remove_file(&spare.path);
                None
            }
        }
    }

    /// Starts a new message: the envelope header is written to a fresh file aside (unnamed in queue/, or under
    /// tmp/). Fails with Full when usage >= max_size (then nothing is written), except for a delivery report
    /// (`bounced`): the cap protects the disk from new mail, and a report is small (the original's header
    /// section at most) and the only news of a failure; refusing it would lose that. `env.id` is ignored:
    /// the spool assigns the id.
    pub fn begin(&self, env: &Envelope) -> Result<Incoming, SpoolError> {
        if self.max_size > 0 && !env.bounced && self.usage() >= self.max_size {
            return Err(SpoolError::Full);
        }
        // A spare's fdatasync ends with a cache flush of its own, where a new file's fsync can share the
        // journal commit of messages committed at the same moment: with 20 sessions a spare cost 2.52
        // write I/Os per message against 2.43 (journaled ext4, make bench). So spares go to a message
        // written alone, which is where they save a journal commit.
        let alone = self.writing.load(Ordering::SeqCst) == 0;
        let reused = if alone { self.reuse() } else { None };
        let (id, aside, file) = match reused {
            Some(found) => found,
            None => self.fresh_aside()?,
        };
        self.writing.fetch_add(1, Ordering::SeqCst);
        let mut incoming = Incoming {
            id,
            aside: Some(aside),
            header_len: 0,
            written: 0,
            writing: Arc::clone(&self.writing),
            unnamed: Arc::clone(&self.unnamed),
            queue: self.queue.clone(),
            writer: Some(BufWriter::with_capacity(WRITE_BUF, file)),
            usage: Arc::clone(&self.usage),
            queue_sync: Arc::clone(&self.queue_sync),
        };
        // The length is written over its placeholder at the commit.
        let header = format_header(
            &Envelope {
                id: incoming.id.clone(),
                ..env.clone()
            },
            0,
        );
        match header {
            Ok(header) => {
                incoming.write_all(&header)?;
                incoming.header_len = incoming.written;
            }
            Err(e) => {
                incoming.discard();
                return Err(e);
            }
        }
        Ok(incoming)
    }

    /// All queued messages, oldest first. Unparseable files are moved to corrupt/ with a log::warn! and skipped;
    /// names that are not ids are skipped. Recomputes usage.
    pub fn scan(&self) -> Result<Vec<Envelope>, SpoolError> {
        let mut envelopes = Vec::new();
        let mut total = 0u64;
        for (id, path) in self.queued_ids()? {
            match self.read_with_size(&id) {
                Ok((env, size)) => {
                    total = total.saturating_add(size);
                    envelopes.push(env);
                }
                Err(SpoolError::NotFound(_)) => {} // delivered or deleted meanwhile
                Err(SpoolError::Corrupt(why)) => self.quarantine(&id, &path, &why),
                Err(e) => log::warn!("spool: skipping {id}: {e}"),
            }
        }
        self.usage.store(total, Ordering::SeqCst);
        Ok(envelopes)
    }

    /// set_aside moves queued message `id`, found corrupt after the scan, to corrupt/.
    pub fn set_aside(&self, id: &str, why: &str) {
        if let Ok(path) = self.queue_path(id) {
            self.quarantine(id, &path, why);
        }
    }

    /// Moves an unparseable file to corrupt/ (never overwriting an earlier one) and logs it.
    fn quarantine(&self, id: &str, path: &Path, why: &str) {
        let mut dest = self.corrupt.join(id);
        let mut n = 1;
        while dest.exists() {
            dest = self.corrupt.join(format!("{id}.{n}"));
            n += 1;
        }
        match fs::rename(path, &dest) {
            Ok(()) => {
                log::warn!("spool: {why}; moved to {} for inspection", dest.display());
                let _ = sync_dir(&self.corrupt);
                let _ = sync_dir(&self.queue);
            }
            Err(e) => log::warn!(
                "spool: {why}; cannot move it to {}: {e}",
                self.corrupt.display()
            ),
        }
    }

    /// The envelope of message `id` and its file size. Corrupt when the file is shorter than its header says.
    fn read_with_size(&self, id: &str) -> Result<(Envelope, u64), SpoolError> {
        let (header, _, size) = self.open_header(id)?;
        Ok((header.env, size))
    }

    /// Opens message `id` and reads its header: the header (with the id from the file name), the reader at
    /// the first message byte, the file's size. Corrupt when the file is shorter than its header says.
    fn open_header(&self, id: &str) -> Result<(Header, BufReader<File>, u64), SpoolError> {
        let (file, path) = self.open_queued(id)?;
        let size = file
            .metadata()
            .map_err(|e| io_err(&e, "cannot stat", &path))?
            .len();
        let mut reader = BufReader::new(file);
        let mut header = read_header(&mut reader, &path)?;
        header.message_len(size).map_err(|e| {
            SpoolError::Corrupt(format!("{}: {}", path.display(), format::inner(&e)))
        })?;
        // The file name is authoritative (a file may have been copied in under another name).
        header.env.id = id.to_string();
        Ok((header, reader, size))
    }

    /// The envelope of message `id`. BadId for a malformed id, NotFound when not queued.
    pub fn read(&self, id: &str) -> Result<Envelope, SpoolError> {
        self.read_with_size(id).map(|(env, _)| env)
    }

    /// The envelope and a reader positioned at the first byte of the message, and the message size.
    /// The reader ends with the message, whatever the file holds past it.
    pub fn open_message(&self, id: &str) -> Result<(Envelope, Message, u64), SpoolError> {
        let (header, reader, size) = self.open_header(id)?;
        let len = header.message_len(size)?;
        Ok((header.env, reader.take(len), len))
    }

    /// Atomically replaces the envelope of message `env.id`: a new tmp file with the new envelope and the same
    /// message bytes (streamed), fsync, rename over queue/ID, fsync queue/. NotFound when the message was deleted
    /// meanwhile: it is not resurrected and nothing is left behind. The old file's lock is held from the check
    /// that it is still queued to the rename, so a `delete` cannot land in between (see `lock_queued`).
    pub fn update(&self, env: &Envelope) -> Result<(), SpoolError> {
        self.rewrite(env, || {})
    }

    /// rewrite is `update`, calling `before_rename` between its check that the message is still queued
    /// and its rename (tests put a racing delete there).
    fn rewrite(&self, env: &Envelope, before_rename: impl FnOnce()) -> Result<(), SpoolError> {
        let path = self.queue_path(&env.id)?;
        let (old, mut reader, old_size) = self.open_header(&env.id)?;
        let len = old.message_len(old_size)?;
        let header = format_header(env, len)?;

        let (_, tmp, file) = self.fresh()?;
        let result = (|| {
            let mut w = BufWriter::with_capacity(WRITE_BUF, file);
            w.write_all(&header)
                .map_err(|e| io_err(&e, "cannot write", &tmp))?;
            let copied = io::copy(&mut reader.by_ref().take(len), &mut w)
                .map_err(|e| io_err(&e, "cannot copy", &path))?;
            if copied != len {
                return Err(SpoolError::Io(format!(
                    "{} changed size while being rewritten",
                    path.display()
                )));
            }
            let file = w
                .into_inner()
                .map_err(|e| io_err(e.error(), "cannot write", &tmp))?;
            file.sync_all()
                .map_err(|e| io_err(&e, "cannot fsync", &tmp))?;
            let new_size = file
                .metadata()
                .map_err(|e| io_err(&e, "cannot stat", &tmp))?
                .len();
            // Deleted meanwhile (queue delete from another process)? Then the old inode has no link left.
            // A delete takes this lock before it unlinks: held until the rename, no delete can slip
            // between the check and the rename and be undone by it.
            lock(reader.get_ref(), &path);
            let linked = reader
                .get_ref()
                .metadata()
                .map_err(|e| io_err(&e, "cannot stat", &path))?
                .nlink();
            if linked == 0 || !path.exists() {
                return Err(SpoolError::NotFound(env.id.clone()));
            }
            before_rename();
            fs::rename(&tmp, &path).map_err(|e| io_err(&e, "cannot rename into", &path))?;
            Ok(new_size)
        })();
        // Unlocks: a waiting delete goes on, finds the old file unlinked and removes the new one.
        drop(reader);
        match result {
            Ok(new_size) => {
                if new_size >= old_size {
                    self.usage.fetch_add(new_size - old_size, Ordering::SeqCst);
                } else {
                    usage_sub(&self.usage, old_size - new_size);
                }
                self.queue_sync.sync()
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes message `id` from the queue. BadId for a malformed id, NotFound when not queued.
    pub fn delete(&self, id: &str) -> Result<(), SpoolError> {
        self.remove(id)?;
        // So a deleted message does not come back after a crash.
        self.queue_sync.sync()
    }

    /// delete_delivered removes a message that has been delivered without
    /// waiting for the folder fsync: the removal reaches the disk with the next
    /// one (an accepted message's, or `sync_pending`, which the delivery runner
    /// calls at least once a second), and the sender goes on to the next
    /// message meanwhile. A power cut in that window brings the message back
    /// and it is sent again (at-least-once; Postfix never syncs a removal); a
    /// crash of the process does not (the unlink is already in the kernel).
    /// In the relay (`recycle_delivered`) the file may be kept in tmp/ for a new message instead.
    pub fn delete_delivered(&self, id: &str) -> Result<(), SpoolError> {
        // Locked as `delete` does, so no rewrite by another process is between its check and its rename.
        // The relay's own rewrites of this message are over: its sender settles it one step at a time.
        let (file, path) = self.lock_queued(id)?;
        match self.spares.keep(&path, id, &self.tmp, &self.queue_sync) {
            Ok(Some(size)) => {
                usage_sub(&self.usage, size);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) => log::debug!("spool: cannot keep {} for reuse: {e}", path.display()),
        }
        self.unlink(id, &file, &path)?;
        self.queue_sync.sync_later();
        Ok(())
    }

    /// sync_pending makes the removals of delete_delivered durable now.
    pub fn sync_pending(&self) -> Result<(), SpoolError> {
        self.queue_sync.sync_pending()
    }

    fn remove(&self, id: &str) -> Result<(), SpoolError> {
        match self.lock_queued(id) {
            Ok((file, path)) => self.unlink(id, &file, &path),
            // Not a message file (a link, a FIFO): nothing rewrites it, its name just goes.
            Err(SpoolError::Corrupt(_)) => {
                let path = self.queue_path(id)?;
                fs::remove_file(&path).map_err(|e| io_err(&e, "cannot delete", &path))
            }
            Err(e) => Err(e),
        }
    }

    /// lock_queued opens queue/ID and takes its lock, the one `update` holds from its check that the
    /// message is still queued to its rename over it. Once locked, a file that lost its name was replaced by
    /// such a rename meanwhile: the new copy is locked instead (a few times at most; the relay rewrites a
    /// message once per attempt). NotFound when the message is gone.
    fn lock_queued(&self, id: &str) -> Result<(File, PathBuf), SpoolError> {
        for _ in 0..LOCK_TRIES {
            let (file, path) = self.open_queued(id)?;
            lock(&file, &path);
            if still_named(&file, &path)? {
                return Ok((file, path));
            }
        }
        Err(SpoolError::Io(format!(
            "{}: rewritten {LOCK_TRIES} times while being removed; try again",
            self.queue_path(id)?.display()
        )))
    }

    /// unlink removes the locked `file`, queue/ID, from the queue.
    fn unlink(&self, id: &str, file: &File, path: &Path) -> Result<(), SpoolError> {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(path) {
            Ok(()) => {
                usage_sub(&self.usage, size);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) => Err(io_err(&e, "cannot delete", path)),
        }
    }
}

/// How many times `lock_queued` follows a message to its rewritten copy before giving up.
const LOCK_TRIES: usize = 8;

/// lock takes the exclusive lock on a queued message's file (see `Spool::lock_queued`). Advisory: a
/// filesystem without flock gets a debug line and the unlocked order of old (a delete landing in a
/// rewrite could then be undone by it; never a message lost).
fn lock(file: &File, path: &Path) {
    if let Err(e) = sys::lock(file) {
        log::debug!("spool: cannot lock {}: {e}", path.display());
    }
}

/// still_named: `file` is still what `path` names (a rename over the path unlinked it otherwise).
fn still_named(file: &File, path: &Path) -> Result<bool, SpoolError> {
    let mine = file
        .metadata()
        .map_err(|e| io_err(&e, "cannot stat", path))?;
    if mine.nlink() == 0 {
        return Ok(false);
    }
    match fs::metadata(path) {
        Ok(named) => Ok((named.dev(), named.ino()) == (mine.dev(), mine.ino())),
        // Removed by someone else: the next open says NotFound.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&e, "cannot stat", path)),
    }
}

/// Where a message is written until its commit.
#[derive(Debug, Clone)]
enum Aside {
    /// tmp/ID, renamed to queue/ID.
    Named(PathBuf),
    /// An unnamed file in queue/, linked as this path (queue/ID).
    Unnamed(PathBuf),
    /// A delivered message's file, tmp/spare-OLD, overwritten in place and renamed to queue/ID.
    Spare(PathBuf),
}

impl Aside {
    /// The path errors name: tmp/ID, or queue/ID for the file that will have that name.
    fn shown(&self) -> &Path {
        match self {
            Aside::Named(p) | Aside::Unnamed(p) | Aside::Spare(p) => p,
        }
    }
}

/// A message being written aside. Its file is removed (or, unnamed, simply closed) on any error and on Drop
/// unless committed.
#[derive(Debug)]
pub struct Incoming {
    id: String,
    /// None once committed or discarded.
    aside: Option<Aside>,
    /// The spool's switch for unnamed files, turned off when a link fails.
    unnamed: Arc<AtomicBool>,
    queue: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Bytes of the header, and bytes written so far (header included).
    header_len: u64,
    written: u64,
    /// The spool's count of messages being written; this one leaves it on drop.
    writing: Arc<AtomicUsize>,
    usage: Arc<AtomicU64>,
    queue_sync: Arc<DirSync>,
}

impl Incoming {
    /// The id the message will have once committed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Closes the file and removes it (an unnamed one goes with its last descriptor); later writes and commit
    /// fail.
    fn discard(&mut self) {
        self.writer = None;
        if let Some(Aside::Named(tmp) | Aside::Spare(tmp)) = self.aside.take() {
            let _ = fs::remove_file(tmp);
        }
    }

    /// Where the message is written, or an error when an earlier failure already discarded it.
    fn aside(&self) -> Result<Aside, SpoolError> {
        self.aside.clone().ok_or_else(|| {
            SpoolError::Io(format!("message {} was discarded after an error", self.id))
        })
    }

    /// share_like gives the file mode 0640 despite a tight umask, and the owner and group of `dir` when this
    /// process may give it away (root), else at least its group. For `picorelay sendmail`, whose files the relay
    /// (another user) must read. Best effort: the relay logs a file it cannot read and it stays queued.
    pub fn share_like(&self, dir: &Path) {
        use std::os::unix::fs::{fchown, PermissionsExt};
        let (Some(w), Ok(owner)) = (self.writer.as_ref(), fs::metadata(dir)) else {
            return;
        };
        let file = w.get_ref();
        let _ = file.set_permissions(fs::Permissions::from_mode(FILE_MODE));
        let Ok(mine) = file.metadata() else { return };
        if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid())
            && fchown(file, Some(owner.uid()), Some(owner.gid())).is_err()
        {
            let _ = fchown(file, None, Some(owner.gid()));
        }
    }

    /// Appends message bytes (buffered, 64K). On error the file is removed.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), SpoolError> {
        let aside = self.aside()?;
        let tmp = aside.shown();
        let result = match self.writer.as_mut() {
            Some(w) => w
                .write_all(buf)
                .map_err(|e| io_err(&e, "cannot write", tmp)),
            None => Err(SpoolError::Io(format!("{} is closed", tmp.display()))),
        };
        match result {
            Ok(()) => self.written += buf.len() as u64,
            Err(_) => self.discard(),
        }
        result
    }

    /// flush, write the length, fsync file, link it as queue/ID (or rename tmp/ID -> queue/ID), fsync queue/.
    /// Only after Ok may the client get 250.
    /// Returns the id.
    pub fn commit(mut self) -> Result<String, SpoolError> {
        let result = self.finish();
        if result.is_err() {
            self.discard();
        }
        result
    }

    fn finish(&mut self) -> Result<String, SpoolError> {
        let aside = self.aside()?;
        let tmp = aside.shown();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| SpoolError::Io(format!("{} is closed", tmp.display())))?;
        let file = writer
            .into_inner()
            .map_err(|e| io_err(e.error(), "cannot write", tmp))?;
        let length = length_value(self.written - self.header_len);
        file.write_all_at(length.as_bytes(), length_offset())
            .map_err(|e| io_err(&e, "cannot write", tmp))?;
        if let Aside::Spare(_) = aside {
            // Overwritten within its blocks (or grown, which fdatasync covers too): only the data and the
            // size are needed to read the message back, and no journal commit of its own when nothing grew.
            file.sync_data()
        } else {
            file.sync_all()
        }
        .map_err(|e| io_err(&e, "cannot fsync", tmp))?;
        let size = file
            .metadata()
            .map_err(|e| io_err(&e, "cannot stat", tmp))?
            .len();
        let dest = self.queue.join(&self.id);
        match &aside {
            Aside::Named(tmp) | Aside::Spare(tmp) => {
                drop(file);
                rename_new(tmp, &dest)?;
            }
            Aside::Unnamed(_) => {
                if let Err(e) = sys::link_unnamed(&file, &dest) {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        // This message gets a 4xx (the client sends it again); the next ones go through tmp/.
                        log::warn!(
                            "spool: cannot link a new file into {} ({e}); writing under tmp/ from now on",
                            self.queue.display()
                        );
                        self.unnamed.store(false, Ordering::Relaxed);
                    }
                    return Err(io_err(&e, "cannot link into", &dest));
                }
            }
        }
        if let Err(e) = self.queue_sync.sync() {
            // Not durable, so the client must not get 250: take the message back out (it will retry)
            // rather than deliver one the client also resends.
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        self.aside = None;
        self.usage.fetch_add(size, Ordering::SeqCst);
        Ok(self.id.clone())
    }
}

/// rename_new moves a finished file into queue/, never over a message already
/// there (ids are unique by construction; a clash refuses this one, 4xx).
fn rename_new(tmp: &Path, dest: &Path) -> Result<(), SpoolError> {
    match sys::rename_noreplace(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if dest.exists() {
                return Err(SpoolError::Io(format!(
                    "{}: a message with this id is already queued",
                    dest.display()
                )));
            }
            fs::rename(tmp, dest).map_err(|e| io_err(&e, "cannot rename into", dest))
        }
        Err(e) => Err(io_err(&e, "cannot rename into", dest)),
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.discard();
        self.writing.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(super) struct TempDir(pub(super) PathBuf);

    impl TempDir {
        pub(super) fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "picorelay-spool-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(super) fn env() -> Envelope {
        Envelope {
            arrival: 1_700_000_000,
            ..Envelope::new(
                "alice@example.com",
                &["bob@example.org".to_string()],
                "192.0.2.7",
                "mx.example.com",
            )
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn queue_one(spool: &Spool, e: &Envelope, body: &[u8]) -> String {
        let mut inc = spool.begin(e).unwrap();
        inc.write_all(body).unwrap();
        inc.commit().unwrap()
    }

    #[test]
    fn clean_tmp_leaves_a_file_still_being_written_however_old() {
        let t = TempDir::new("tmp-in-use");
        let spool = Spool::open(&t.0, 0).unwrap();
        let path = t.0.join("tmp").join("0aaa");
        let writing = create_new(&path).unwrap();
        let hours_ago = SystemTime::now() - Duration::from_secs(7200);
        writing.set_modified(hours_ago).unwrap();
        assert_eq!(spool.clean_tmp(Duration::from_secs(3600)).unwrap(), 0);
        assert!(path.exists(), "a sendmail still writing keeps its file");
        drop(writing);
        assert_eq!(spool.clean_tmp(Duration::from_secs(3600)).unwrap(), 1);
        assert!(!path.exists(), "a crash's leftover goes");
    }

    #[test]
    fn links_and_fifos_in_queue_are_set_aside_without_blocking() {
        let t = TempDir::new("odd-files");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.recycle_delivered(true);
        let real = queue_one(&spool, &env(), b"Subject: real\r\n\r\nx\r\n");
        // A link to a copy of a message, and a FIFO, under id-like names (ids are hex: an x, y or
        // z at the end never names the real one).
        let copy = t.0.join("copy");
        fs::copy(t.0.join("queue").join(&real), &copy).unwrap();
        let link = format!("{}x", &real[..real.len() - 1]);
        std::os::unix::fs::symlink(&copy, t.0.join("queue").join(&link)).unwrap();
        let fifo = format!("{}y", &real[..real.len() - 1]);
        let c = std::ffi::CString::new(
            t.0.join("queue")
                .join(&fifo)
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // The scan must come back (a FIFO opened to read waits for a writer for ever).
        let (tx, rx) = std::sync::mpsc::channel();
        let spool = Arc::new(spool);
        let s2 = Arc::clone(&spool);
        std::thread::spawn(move || {
            let _ = tx.send(
                s2.scan()
                    .map(|v| v.into_iter().map(|e| e.id).collect::<Vec<_>>()),
            );
        });
        let ids = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the scan blocked")
            .unwrap();
        assert_eq!(ids, std::slice::from_ref(&real));
        let mut aside = files(&t.0.join("corrupt"));
        aside.sort();
        let mut want = vec![link.clone(), fifo];
        want.sort();
        assert_eq!(aside, want);
        // `queue delete` removes such a name (the link itself, not what it points to).
        let stray = format!("{}z", &real[..real.len() - 1]);
        std::os::unix::fs::symlink(&copy, t.0.join("queue").join(&stray)).unwrap();
        spool.delete(&stray).unwrap();
        assert!(!t.0.join("queue").join(&stray).exists() && copy.exists());
        // Delivered, a link is never kept to be written through.
        std::os::unix::fs::symlink(&copy, t.0.join("queue").join(&link)).unwrap();
        let kept = spool
            .spares
            .keep(
                &t.0.join("queue").join(&link),
                &link,
                &spool.tmp,
                &spool.queue_sync,
            )
            .unwrap();
        assert_eq!(kept, None);
        assert!(fs::read(&copy).unwrap().ends_with(b"x\r\n"));
    }

    #[test]
    fn valid_ids() {
        let long = "a".repeat(65);
        for (id, ok) in [
            ("0005f3c2a1b2c3000004d200000007", true),
            ("A1", true),
            ("", false),
            ("..", false),
            ("../x", false),
            ("/etc/passwd", false),
            ("a/b", false),
            ("a b", false),
            ("a.b", false),
            ("é", false),
            (long.as_str(), false),
        ] {
            assert_eq!(valid_id(id), ok, "{id:?}");
        }
    }

    #[test]
    fn a_clashing_id_never_replaces_a_queued_message() {
        let t = TempDir::new("clash");
        fs::create_dir_all(&t.0).unwrap();
        let (queued, new) = (t.0.join("queued"), t.0.join("new"));
        fs::write(&queued, "first").unwrap();
        fs::write(&new, "second").unwrap();
        assert!(rename_new(&new, &queued).is_err());
        assert_eq!(fs::read_to_string(&queued).unwrap(), "first");
        let free = t.0.join("free");
        rename_new(&new, &free).unwrap();
        assert_eq!(fs::read_to_string(&free).unwrap(), "second");
        assert!(!new.exists());
    }

    #[test]
    fn commit_then_scan_and_read() {
        let t = TempDir::new("commit");
        let spool = Spool::open(&t.0, 0).unwrap();
        assert_eq!(spool.dir(), t.0.as_path());
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        let id = queue_one(&spool, &env(), body);
        assert!(valid_id(&id));
        assert_eq!(files(&t.0.join("tmp")), Vec::<String>::new());
        assert_eq!(files(&t.0.join("queue")), vec![id.clone()]);
        let list = spool.scan().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0],
            Envelope {
                id: id.clone(),
                ..env()
            }
        );
        assert_eq!(spool.read(&id).unwrap(), list[0]);
        let (e, mut r, size) = spool.open_message(&id).unwrap();
        assert_eq!(e.id, id);
        let mut msg = Vec::new();
        r.read_to_end(&mut msg).unwrap();
        assert_eq!(msg, body);
        assert_eq!(size, body.len() as u64);
        let file_len = fs::metadata(t.0.join("queue").join(&id)).unwrap().len();
        assert_eq!(spool.usage(), file_len);
        // A reopened spool computes the same usage.
        assert_eq!(Spool::open(&t.0, 0).unwrap().usage(), file_len);
    }

    #[test]
    fn a_delivered_message_goes_at_once_and_its_removal_is_synced_later() {
        let t = TempDir::new("delivered");
        let spool = Spool::open(&t.0, 0).unwrap();
        let id = queue_one(&spool, &env(), b"Subject: hi\r\n\r\nhello\r\n");
        let unsynced = |s: &Spool| s.queue_sync.unsynced();
        assert_eq!(unsynced(&spool), 0);
        spool.delete_delivered(&id).unwrap();
        assert!(files(&t.0.join("queue")).is_empty());
        assert_eq!(spool.usage(), 0);
        assert_eq!(
            unsynced(&spool),
            1,
            "the removal waits for the next folder sync"
        );
        spool.sync_pending().unwrap();
        assert_eq!(unsynced(&spool), 0);
        spool.sync_pending().unwrap(); // nothing pending: no fsync, no error
        assert!(matches!(
            spool.delete_delivered(&id),
            Err(SpoolError::NotFound(_))
        ));
    }

    #[test]
    fn tmp_leftovers_cleaned_at_open() {
        let t = TempDir::new("leftover");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.unnamed.store(false, Ordering::Relaxed); // messages in progress under tmp/
        let old = t.0.join("tmp").join("crashed");
        let f = File::create(&old).unwrap();
        f.set_modified(SystemTime::now() - TMP_MAX_AGE - Duration::from_secs(60))
            .unwrap();
        drop(f);
        let inc = spool.begin(&env()).unwrap(); // in progress: must survive
        let young = inc.id().to_string();
        drop(Spool::open(&t.0, 0).unwrap());
        assert_eq!(files(&t.0.join("tmp")), vec![young.clone()]);
        // Being written (locked): not removed, whatever the age asked for.
        assert_eq!(spool.clean_tmp(Duration::ZERO).unwrap(), 0);
        assert_eq!(files(&t.0.join("tmp")), vec![young]);
        drop(inc);
    }

    #[test]
    fn abort_and_drop_leave_nothing() {
        for unnamed in [true, false] {
            let t = TempDir::new(&format!("drop-{unnamed}"));
            let spool = Spool::open(&t.0, 0).unwrap();
            spool.unnamed.store(unnamed, Ordering::Relaxed);
            let mut inc = spool.begin(&env()).unwrap();
            inc.write_all(&vec![b'x'; 200_000]).unwrap();
            let aside = if unnamed { 0 } else { 1 };
            assert_eq!(files(&t.0.join("tmp")).len(), aside, "unnamed={unnamed}");
            assert!(files(&t.0.join("queue")).is_empty(), "unnamed={unnamed}");
            drop(inc);
            assert!(files(&t.0.join("tmp")).is_empty());
            assert!(files(&t.0.join("queue")).is_empty());
            assert_eq!(spool.usage(), 0);
            // An envelope that cannot be stored leaves nothing either.
            let mut e = env();
            e.recipients = vec![e.recipients[0].clone(); format::MAX_RECIPIENTS + 1];
            assert!(spool.begin(&e).is_err());
            assert!(files(&t.0.join("tmp")).is_empty());
            assert!(files(&t.0.join("queue")).is_empty());
        }
    }

    #[test]
    fn a_new_message_is_unnamed_until_its_commit_links_it() {
        let t = TempDir::new("unnamed");
        let spool = Spool::open(&t.0, 0).unwrap();
        assert!(
            spool.unnamed.load(Ordering::Relaxed),
            "O_TMPFILE and /proc here"
        );
        let mut inc = spool.begin(&env()).unwrap();
        inc.write_all(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        // Nothing named anywhere while it is written: a crash now leaves nothing to clean.
        assert!(files(&t.0.join("tmp")).is_empty());
        assert!(files(&t.0.join("queue")).is_empty());
        let id = inc.commit().unwrap();
        assert_eq!(files(&t.0.join("queue")), vec![id.clone()]);
        assert!(
            spool.unnamed.load(Ordering::Relaxed),
            "still unnamed after a link"
        );
        let (e, mut r, _) = spool.open_message(&id).unwrap();
        assert_eq!(e.id, id);
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(body, "Subject: x\r\n\r\nbody\r\n");
        assert_eq!(
            fs::metadata(t.0.join("queue").join(&id)).unwrap().mode() & 0o777,
            FILE_MODE & !umask()
        );
    }

    #[test]
    fn an_unnamed_file_never_replaces_a_queued_message() {
        let t = TempDir::new("unnamed-clash");
        let q = t.0.join("q");
        fs::create_dir_all(&q).unwrap();
        fs::write(q.join("queued"), "first").unwrap();
        let mut f = sys::open_unnamed(&q, FILE_MODE).unwrap();
        f.write_all(b"second").unwrap();
        let e = sys::link_unnamed(&f, &q.join("queued")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(q.join("queued")).unwrap(), "first");
        sys::link_unnamed(&f, &q.join("free")).unwrap();
        assert_eq!(fs::read_to_string(q.join("free")).unwrap(), "second");
    }

    /// The process umask, from /proc (setting it to read it would race other tests' files).
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn corrupt_file_quarantined() {
        let t = TempDir::new("corrupt");
        let spool = Spool::open(&t.0, 0).unwrap();
        let good = queue_one(&spool, &env(), b"x\r\n");
        let q = t.0.join("queue");
        fs::write(q.join("0000bad"), b"garbage\n\nbody").unwrap();
        fs::write(q.join("0000bad2"), b"picorelay-spool 9\n\n").unwrap();
        fs::write(q.join("not-an-id.txt"), b"whatever").unwrap();
        fs::write(t.0.join("corrupt").join("0000bad"), b"earlier").unwrap();
        let list = spool.scan().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, good);
        assert_eq!(files(&q), vec![good.clone(), "not-an-id.txt".to_string()]);
        assert_eq!(
            files(&t.0.join("corrupt")),
            vec!["0000bad", "0000bad.1", "0000bad2"]
        );
        assert_eq!(
            fs::read(t.0.join("corrupt").join("0000bad")).unwrap(),
            b"earlier"
        );
        assert_eq!(spool.usage(), fs::metadata(q.join(&good)).unwrap().len());
        assert!(matches!(
            spool.read("0000bad"),
            Err(SpoolError::NotFound(_))
        ));
    }

    #[test]
    fn update_keeps_message_and_changes_state() {
        let t = TempDir::new("update");
        let spool = Spool::open(&t.0, 0).unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let id = queue_one(&spool, &env(), &body);
        let mut e = spool.read(&id).unwrap();
        e.attempts = 3;
        e.next_attempt = 1_700_000_600;
        e.last_error = Some("451 4.7.1 greylisted, try again\r\nlater".into());
        e.recipients[0].state = RcptState::Delivered;
        e.recipients[0].reply = Some("250 2.0.0 Ok: queued as ABC".into());
        spool.update(&e).unwrap();
        let (back, mut r, size) = spool.open_message(&id).unwrap();
        assert_eq!(back, e);
        let mut msg = Vec::new();
        r.read_to_end(&mut msg).unwrap();
        assert_eq!(msg, body);
        assert_eq!(size, body.len() as u64);
        assert!(files(&t.0.join("tmp")).is_empty());
        assert_eq!(files(&t.0.join("queue")), vec![id.clone()]);
        let len = fs::metadata(t.0.join("queue").join(&id)).unwrap().len();
        assert_eq!(spool.usage(), len);
    }

    #[test]
    fn update_after_delete_is_not_found_and_leaves_nothing() {
        let t = TempDir::new("updel");
        let spool = Spool::open(&t.0, 0).unwrap();
        let id = queue_one(&spool, &env(), b"x\r\n");
        let e = spool.read(&id).unwrap();
        spool.delete(&id).unwrap();
        assert_eq!(spool.update(&e), Err(SpoolError::NotFound(id.clone())));
        assert!(files(&t.0.join("tmp")).is_empty());
        assert!(files(&t.0.join("queue")).is_empty());
        assert_eq!(spool.usage(), 0);
    }

    #[test]
    fn a_delete_during_a_rewrite_stays_deleted() {
        // Regression (review D3): a `queue delete` landing between update's check that the message is
        // still queued and its rename was undone by the rename, and the message was sent after all.
        let t = TempDir::new("delrace");
        let spool = Arc::new(Spool::open(&t.0, 0).unwrap());
        let id = queue_one(&spool, &env(), b"x\r\n");
        let mut e = spool.read(&id).unwrap();
        e.attempts = 1;
        let mut deleter = None;
        let rewritten = spool.rewrite(&e, || {
            let (spool, id) = (Arc::clone(&spool), id.clone());
            deleter = Some(std::thread::spawn(move || spool.delete(&id)));
            // Time for the delete to land before the rename, were it not held back.
            std::thread::sleep(Duration::from_millis(300));
        });
        assert_eq!(rewritten, Ok(()));
        assert_eq!(deleter.unwrap().join().unwrap(), Ok(()));
        assert!(files(&t.0.join("queue")).is_empty());
        assert!(files(&t.0.join("tmp")).is_empty());
        assert_eq!(spool.read(&id), Err(SpoolError::NotFound(id.clone())));
        assert_eq!(spool.usage(), 0);
    }

    #[test]
    fn a_rewrite_after_a_delete_waits_for_nothing_and_finds_nothing() {
        // The lock a delete held is gone with it: a later rewrite is NotFound, not blocked.
        let t = TempDir::new("delfirst");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.recycle_delivered(true);
        let a = queue_one(&spool, &env(), b"x\r\n");
        let b = queue_one(&spool, &env(), b"y\r\n");
        let (ea, eb) = (spool.read(&a).unwrap(), spool.read(&b).unwrap());
        spool.delete(&a).unwrap();
        spool.delete_delivered(&b).unwrap();
        assert_eq!(spool.update(&ea), Err(SpoolError::NotFound(a.clone())));
        assert_eq!(spool.update(&eb), Err(SpoolError::NotFound(b.clone())));
        assert_eq!(spool.delete(&a), Err(SpoolError::NotFound(a.clone())));
        assert_eq!(files(&t.0.join("tmp")), [format!("spare-{b}")]);
    }

    #[test]
    fn unknown_and_invalid_ids() {
        let t = TempDir::new("ids");
        let spool = Spool::open(&t.0, 0).unwrap();
        let e = |id: &str| Envelope {
            id: id.into(),
            ..env()
        };
        assert_eq!(
            spool.delete("00000000000000"),
            Err(SpoolError::NotFound("00000000000000".into()))
        );
        assert!(matches!(spool.read("0abc"), Err(SpoolError::NotFound(_))));
        assert!(matches!(
            spool.open_message("0abc"),
            Err(SpoolError::NotFound(_))
        ));
        for bad in ["", "../x", "/etc/passwd", "..", "a/../../b"] {
            assert_eq!(spool.delete(bad), Err(SpoolError::BadId(bad.into())));
            assert_eq!(spool.read(bad), Err(SpoolError::BadId(bad.into())));
            assert!(matches!(spool.open_message(bad), Err(SpoolError::BadId(_))));
            assert_eq!(spool.update(&e(bad)), Err(SpoolError::BadId(bad.into())));
        }
        assert_eq!(
            SpoolError::BadId("../x".into()).to_string(),
            "invalid message id \"../x\": ids are letters and digits only"
        );
    }

    #[test]
    fn max_size_refuses_with_full() {
        let t = TempDir::new("full");
        let spool = Spool::open(&t.0, 1000).unwrap();
        let id = queue_one(&spool, &env(), &[b'x'; 2000]);
        assert!(matches!(spool.begin(&env()), Err(SpoolError::Full)));
        assert!(files(&t.0.join("tmp")).is_empty());
        // Reopening sees the same usage; deleting frees room.
        let spool = Spool::open(&t.0, 1000).unwrap();
        assert!(matches!(spool.begin(&env()), Err(SpoolError::Full)));
        // A delivery report still goes in: it is the only news of a failure.
        let report = Envelope {
            bounced: true,
            ..env()
        };
        let mut inc = spool.begin(&report).unwrap();
        inc.write_all(b"report").unwrap();
        let rid = inc.commit().unwrap();
        spool.delete(&rid).unwrap();
        spool.delete(&id).unwrap();
        assert_eq!(spool.usage(), 0);
        assert!(spool.begin(&env()).is_ok());
    }

    #[test]
    fn ids_sort_in_arrival_order() {
        let t = TempDir::new("order");
        let spool = Spool::open(&t.0, 0).unwrap();
        let mut ids = Vec::new();
        for i in 0..20u64 {
            let e = Envelope {
                arrival: i,
                ..env()
            };
            ids.push(queue_one(&spool, &e, b"x\r\n"));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|id| id.len() == 30 && valid_id(id)));
        let scanned: Vec<u64> = spool.scan().unwrap().iter().map(|e| e.arrival).collect();
        assert_eq!(scanned, (0..20).collect::<Vec<u64>>());
    }

    #[test]
    fn concurrent_commits_get_unique_ids() {
        let t = TempDir::new("threads");
        let spool = Arc::new(Spool::open(&t.0, 0).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let spool = Arc::clone(&spool);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let body = format!("thread {n} msg {i}\r\n");
                            queue_one(&spool, &env(), body.as_bytes())
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        let mut ids: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 400);
        let scanned: Vec<String> = spool.scan().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(scanned, ids);
        let total: u64 = ids
            .iter()
            .map(|id| fs::metadata(t.0.join("queue").join(id)).unwrap().len())
            .sum();
        assert_eq!(spool.usage(), total);
    }

    #[test]
    fn modes_are_restrictive() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempDir::new("modes");
        let spool = Spool::open(&t.0, 0).unwrap();
        let id = queue_one(&spool, &env(), b"x\r\n");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&t.0.join("queue").join(id)) & !FILE_MODE, 0);
        for sub in ["tmp", "queue", "corrupt"] {
            assert_eq!(mode(&t.0.join(sub)) & !DIR_MODE, 0, "{sub}");
        }
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    fn read_back(spool: &Spool, id: &str) -> Vec<u8> {
        let (_, mut r, size) = spool.open_message(id).unwrap();
        let mut msg = Vec::new();
        r.read_to_end(&mut msg).unwrap();
        assert_eq!(size, msg.len() as u64);
        msg
    }

    #[test]
    fn a_delivered_file_is_overwritten_once_its_removal_is_on_disk() {
        let t = TempDir::new("reuse");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.recycle_delivered(true);
        let (q, tmp) = (t.0.join("queue"), t.0.join("tmp"));
        let long = format!("Subject: long\r\n\r\n{}\r\n", "x".repeat(6000));
        let m1 = queue_one(&spool, &env(), long.as_bytes());
        let ino1 = ino(&q.join(&m1));
        spool.delete_delivered(&m1).unwrap();
        assert_eq!(files(&tmp), [format!("spare-{m1}")]);
        assert!(files(&q).is_empty());
        assert_eq!(spool.usage(), 0);

        // Its removal from queue/ is not on disk yet: the next message gets a file of its own, and its
        // commit's folder fsync covers the removal.
        let m2 = queue_one(&spool, &env(), b"Subject: two\r\n\r\n2\r\n");
        assert_ne!(ino(&q.join(&m2)), ino1);

        // Now it is reused, and the shorter message reads back exactly, stale bytes past it ignored.
        let short = b"Subject: three\r\n\r\n3\r\n";
        let m3 = queue_one(&spool, &env(), short);
        assert_eq!(ino(&q.join(&m3)), ino1);
        assert!(files(&tmp).is_empty());
        assert_eq!(read_back(&spool, &m3), short);
        let file_len = fs::metadata(q.join(&m3)).unwrap().len();
        assert!(file_len > short.len() as u64 + 6000, "{file_len}");
        assert_eq!(
            spool.usage(),
            file_len + fs::metadata(q.join(&m2)).unwrap().len()
        );
        assert_eq!(spool.scan().unwrap().len(), 2);
        assert!(files(&t.0.join("corrupt")).is_empty());

        // A state rewrite keeps exactly the message.
        let mut e = spool.read(&m3).unwrap();
        e.attempts = 1;
        spool.update(&e).unwrap();
        assert_eq!(read_back(&spool, &m3), short);
        assert_eq!(spool.read(&m3).unwrap().attempts, 1);

        // A message longer than the spare grows it.
        spool.delete_delivered(&m2).unwrap();
        spool.sync_pending().unwrap();
        let m4 = queue_one(&spool, &env(), long.as_bytes());
        assert_eq!(read_back(&spool, &m4), long.as_bytes());
        assert!(files(&tmp).is_empty());
    }

    #[test]
    fn only_the_relay_keeps_delivered_files_and_only_a_few() {
        let t = TempDir::new("spares");
        let spool = Spool::open(&t.0, 0).unwrap();
        let tmp = t.0.join("tmp");
        // Not enabled (queue commands, sendmail): unlinked.
        let id = queue_one(&spool, &env(), b"x\r\n");
        spool.delete_delivered(&id).unwrap();
        assert!(files(&tmp).is_empty());

        // Leftovers of an earlier run go at start-up; clean_tmp leaves the pool alone.
        fs::write(tmp.join("spare-0abc"), b"old").unwrap();
        spool.clean_tmp(Duration::ZERO).unwrap();
        assert_eq!(files(&tmp), ["spare-0abc"]);
        spool.recycle_delivered(true);
        assert!(files(&tmp).is_empty());

        let ids: Vec<String> = (0..40)
            .map(|_| queue_one(&spool, &env(), b"x\r\n"))
            .collect();
        for id in &ids {
            spool.delete_delivered(id).unwrap();
        }
        assert_eq!(files(&tmp).len(), spares::MAX_FILES);
        assert_eq!(spool.spares.len(), spares::MAX_FILES);
        // Too big a file, or one with another link, is unlinked.
        let spool2 = Spool::open(&t.0.join("b"), 0).unwrap();
        spool2.recycle_delivered(true);
        let big = queue_one(&spool2, &env(), &vec![b'a'; 300 * 1024]);
        spool2.delete_delivered(&big).unwrap();
        let linked = queue_one(&spool2, &env(), b"x\r\n");
        fs::hard_link(t.0.join("b/queue").join(&linked), t.0.join("b/other")).unwrap();
        spool2.delete_delivered(&linked).unwrap();
        assert!(files(&t.0.join("b/tmp")).is_empty());
        assert_eq!(spool2.spares.len(), 0);
    }

    #[test]
    fn an_aborted_message_in_a_spare_leaves_nothing() {
        let t = TempDir::new("spare-abort");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.recycle_delivered(true);
        let id = queue_one(&spool, &env(), b"Subject: a\r\n\r\nbody\r\n");
        spool.delete_delivered(&id).unwrap();
        spool.sync_pending().unwrap();
        let mut inc = spool.begin(&env()).unwrap();
        inc.write_all(b"partial").unwrap();
        assert_eq!(
            files(&t.0.join("tmp")),
            [format!("spare-{id}")],
            "written in place"
        );
        drop(inc);
        assert!(files(&t.0.join("tmp")).is_empty());
        assert!(files(&t.0.join("queue")).is_empty());
        assert_eq!(spool.usage(), 0);
    }

    #[test]
    fn a_spare_goes_to_a_message_written_alone() {
        let t = TempDir::new("spare-alone");
        let spool = Spool::open(&t.0, 0).unwrap();
        spool.recycle_delivered(true);
        for _ in 0..2 {
            let id = queue_one(&spool, &env(), b"Subject: a\r\n\r\nbody\r\n");
            spool.delete_delivered(&id).unwrap();
        }
        spool.sync_pending().unwrap();
        assert_eq!(spool.spares.len(), 2);
        // The first, alone, takes a spare; the second, while the first is being written, gets a new file
        // (its fsync can share a journal commit with others).
        let first = spool.begin(&env()).unwrap();
        assert_eq!(spool.spares.len(), 1);
        let second = spool.begin(&env()).unwrap();
        assert_eq!(spool.spares.len(), 1);
        drop((first, second));
        // Alone again: the next one takes the other spare.
        let alone = spool.begin(&env()).unwrap();
        assert_eq!(spool.spares.len(), 0);
        drop(alone);
        assert!(files(&t.0.join("tmp")).is_empty());
    }
}

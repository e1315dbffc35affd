//! Group commit for one directory: renames, links and unlinks in it made durable with as few fsyncs as
//! possible.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use super::{io_err, SpoolError};

/// fsyncs a directory so a rename or unlink in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| fsync_folder(&d, dir))
        .map_err(|e| io_err(&e, "cannot fsync directory", dir))
}

/// fsync_folder fsyncs an open folder. Some filesystems (FUSE ones, some network ones) answer
/// EINVAL: they cannot sync a folder at all. Refusing all mail for it would lose more than it
/// saves; the relay says once what it cannot promise there and goes on.
fn fsync_folder(d: &File, path: &Path) -> std::io::Result<()> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match d.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "spool: the filesystem of {} cannot fsync a folder (EINVAL): a message's name reaches the disk when the filesystem writes it, so a power cut may lose mail already acknowledged; put [queue] dir on a local filesystem (ext4, xfs, f2fs, UBIFS)",
                    path.display()
                );
            }
            Ok(())
        }
        other => other,
    }
}

/// DirSync makes renames and unlinks in one directory durable with as few
/// fsyncs as possible (group commit): a caller that arrives while an fsync runs
/// waits for the next one, which covers every change made before it began. Each
/// caller still returns only after an fsync that started after its own change,
/// so a `250` is never sent before its directory entry is on disk.
pub struct DirSync {
    dir: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Changes announced so far (each caller's ticket).
    requested: u64,
    /// Every ticket up to this one is on disk.
    synced: u64,
    /// An fsync is under way.
    running: bool,
    /// Callers waiting for a running fsync (none: no wake-up to send).
    waiting: usize,
    /// The directory, opened once: an fsync needs no open/close around it.
    handle: Option<File>,
}

impl fmt::Debug for DirSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirSync({})", self.dir.display())
    }
}

impl DirSync {
    /// fsync syncs the directory through `handle` (opened when missing) and
    /// returns the handle to keep; after a failure it is dropped and reopened next time.
    fn fsync(&self, handle: Option<File>) -> (Result<(), SpoolError>, Option<File>) {
        let dir = match handle {
            Some(d) => d,
            None => match File::open(&self.dir) {
                Ok(d) => d,
                Err(e) => return (Err(io_err(&e, "cannot fsync directory", &self.dir)), None),
            },
        };
        match fsync_folder(&dir, &self.dir) {
            Ok(()) => (Ok(()), Some(dir)),
            Err(e) => (Err(io_err(&e, "cannot fsync directory", &self.dir)), None),
        }
    }

    /// DirSync::new syncs `dir`.
    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_path_buf(),
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
        }
    }

    /// sync_later notes a change that must reach the disk soon but that no
    /// caller waits for: the next sync, or sync_pending, covers it. Returns the
    /// change's ticket for `covered`.
    pub fn sync_later(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested += 1;
        st.requested
    }

    /// covered is true once an fsync that began after the change with this
    /// ticket has completed: the change is on disk.
    pub fn covered(&self, ticket: u64) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.synced >= ticket
    }

    /// Changes announced and not yet covered by an fsync.
    #[cfg(test)]
    pub fn unsynced(&self) -> u64 {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested - st.synced
    }

    /// sync_pending syncs when a change noted by sync_later is not on disk yet.
    pub fn sync_pending(&self) -> Result<(), SpoolError> {
        let pending = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.synced < st.requested
        };
        if pending {
            self.sync()
        } else {
            Ok(())
        }
    }

    /// sync returns once a directory fsync that began after this call has
    /// completed. If that fsync fails, the caller that ran it gets the error and
    /// the waiting ones try again themselves.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.synced >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let covers = st.requested;
                let handle = st.handle.take();
                drop(st);
                let (result, handle) = self.fsync(handle);
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                st.handle = handle;
                if result.is_ok() {
                    st.synced = st.synced.max(covers);
                }
                if st.waiting > 0 {
                    self.done.notify_all();
                }
                result?;
                continue;
            }
            st.waiting += 1;
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::TempDir;
    use std::fs;
    use std::sync::Arc;

    #[test]
    fn dir_sync_serves_concurrent_callers_and_reports_failures() {
        let t = TempDir::new("dirsync");
        fs::create_dir_all(&t.0).unwrap();
        let sync = Arc::new(DirSync::new(&t.0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let sync = Arc::clone(&sync);
                std::thread::spawn(move || (0..25).all(|_| sync.sync().is_ok()))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        let st = sync.state.lock().unwrap();
        assert_eq!((st.requested, st.synced, st.running), (200, 200, false));
        drop(st);
        // A directory that is gone: every caller gets the error, none waits forever.
        let gone = Arc::new(DirSync::new(&t.0.join("missing")));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gone = Arc::clone(&gone);
                std::thread::spawn(move || gone.sync().is_err())
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }
}

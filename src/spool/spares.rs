//! Files of delivered messages, kept in tmp/ to be overwritten by new messages instead of unlinked.
//!
//! Why: a new file costs its inode and its blocks, allocated when it is written and freed when it is
//! unlinked, and on a journaled filesystem its fsync is a journal commit of its own before the one that
//! names it. A file that already has its blocks and is overwritten within its size needs only its data
//! written: `fdatasync` then has no metadata to commit, so a message costs one journal commit (its name)
//! instead of two, and no block or inode is allocated or freed (PostgreSQL recycles its WAL segments the
//! same way). The message's `length` in its header says where it ends; whatever lies past it is ignored.
//!
//! The order still holds: the file is written aside (tmp/), made durable, then renamed into queue/ and the
//! folder fsynced before the `250`. One more rule makes reuse safe at power loss: a spare is overwritten
//! only once the removal of its old name from queue/ is on disk (a queue/ fsync that began after the rename
//! has completed). Otherwise a power cut could bring the delivered message's name back over new bytes.
//!
//! Only the relay keeps spares (`Spool::recycle_delivered`); other processes sharing the spool unlink as
//! before. The pool is small and bounded (files, bytes per file and in all), and emptied at start-up.
//!
//! Where it pays (`tools/io-micro.py`, one message at a time, 4.4 KB, per message): ext4 with a journal
//! 5.02 → 4.02 write I/Os and 61.5 → 29.0 KB; xfs 3.00 → 3.00 and 13.0 → 10.3 KB; btrfs 21.2 → 13.6 and
//! 282 → 157 KB. On ext4 without a journal it costs one write more (6.01 → 7.01): the fsync of a file
//! renamed into a folder also writes that folder there (`ext4_sync_parent`), so `[queue] reuse_files =
//! auto` leaves it off on such a filesystem. With many sessions at once a new file's fsync shares the
//! journal commit of the others while a spare's fdatasync ends with a cache flush of its own, so a spare
//! goes only to a message begun while no other is being written (`Spool::begin`).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::dirsync::DirSync;

/// Most files kept.
pub(super) const MAX_FILES: usize = 32;
/// Larger files are unlinked: a big attachment's file is not worth holding on to.
const MAX_FILE: u64 = 256 * 1024;
/// Most bytes kept in all (beyond `queue.max_size`, which counts queued messages only).
const MAX_BYTES: u64 = 1024 * 1024;
/// Name prefix of a spare in tmp/: `spare-ID`, ID the delivered message's.
pub(super) const PREFIX: &str = "spare-";

/// A kept file.
#[derive(Debug)]
pub(super) struct Spare {
    pub path: PathBuf,
    size: u64,
    /// The queue/ sync ticket of the rename that took it out of queue/.
    ticket: u64,
}

#[derive(Debug, Default)]
struct Pool {
    on: bool,
    files: Vec<Spare>,
    bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct Spares {
    pool: Mutex<Pool>,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// enable removes the spares a previous run left in `tmp` (nothing is known about whether their removal
    /// from queue/ reached the disk) and, when `on`, starts keeping files.
    pub fn enable(&self, tmp: &Path, on: bool) {
        if let Ok(entries) = fs::read_dir(tmp) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        self.lock().on = on;
    }

    /// keep moves the delivered message at `path` (queue/ID) to tmp/spare-ID when the pool has room for it
    /// and it is a plain file of this process's user with no other link (nothing else can see it change).
    /// Some(size) when kept; None when the caller should unlink it. The rename's removal from queue/ reaches
    /// the disk with the next queue/ fsync, as an unlink's would.
    pub fn keep(
        &self,
        path: &Path,
        id: &str,
        tmp: &Path,
        queue_sync: &DirSync,
    ) -> io::Result<Option<u64>> {
        // Not followed: a symbolic link that passed for a message must never become a file to
        // write a new message through.
        let meta = fs::symlink_metadata(path)?;
        let mut pool = self.lock();
        let fits = pool.on
            && pool.files.len() < MAX_FILES
            && meta.is_file()
            && meta.len() <= MAX_FILE
            && pool.bytes + meta.len() <= MAX_BYTES
            && meta.nlink() == 1
            && meta.uid() == crate::sys::effective_uid();
        if !fits {
            return Ok(None);
        }
        let spare = tmp.join(format!("{PREFIX}{id}"));
        fs::rename(path, &spare)?;
        let ticket = queue_sync.sync_later();
        pool.bytes += meta.len();
        pool.files.push(Spare {
            path: spare,
            size: meta.len(),
            ticket,
        });
        Ok(Some(meta.len()))
    }

    /// take hands out the most recently kept spare whose removal from queue/ is on disk, if any. Its file
    /// is the caller's from then on: overwrite it or remove it.
    pub fn take(&self, queue_sync: &DirSync) -> Option<Spare> {
        let mut pool = self.lock();
        let i = pool
            .files
            .iter()
            .rposition(|s| queue_sync.covered(s.ticket))?;
        let spare = pool.files.remove(i);
        pool.bytes -= spare.size;
        Some(spare)
    }

    /// How many files are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().files.len()
    }
}

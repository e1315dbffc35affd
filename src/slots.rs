//! Smarthost connection slots, shared by the running relay and `picorelay probe`: one lock
//! file per allowed connection in the spool folder. A connection is opened only while its
//! slot is held, so `[smarthost] max_connections` counts every connection to the smarthost,
//! whichever process opens it (Microsoft 365 allows 3 per mailbox and answers a fourth with
//! `432 4.3.2`). flock locks are released by the kernel when a process dies: no stale slot.

use std::fs::File;
use std::path::Path;

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _file: File,
    /// Which slot (0-based), for the log.
    pub n: usize,
}

/// try_take takes a free slot of `max` in `dir`, or None when all are held (or the folder
/// cannot be written: then slots cannot be shared and the caller goes on without one). The
/// slot files are made like the spool's other lock files (`sys::open_lock_file`): `probe` run
/// as root must not leave one the relay's user cannot lock, or the relay would go on without
/// slots and open more connections than `max_connections`.
pub fn try_take(dir: &Path, max: usize) -> Result<Option<Slot>, String> {
    for n in 0..max.max(1) {
        let path = dir.join(format!(".smarthost-slot.{n}"));
        let file = crate::sys::open_lock_file(dir, &path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if crate::sys::try_lock(&file).map_err(|e| format!("{}: {e}", path.display()))? {
            return Ok(Some(Slot { _file: file, n }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_on_drop() {
        let dir = std::env::temp_dir().join(format!("picorelay-slots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = try_take(&dir, 2).unwrap().unwrap();
        let b = try_take(&dir, 2).unwrap().unwrap();
        assert_eq!((a.n, b.n), (0, 1));
        assert!(try_take(&dir, 2).unwrap().is_none(), "both held");
        drop(a);
        assert_eq!(try_take(&dir, 2).unwrap().unwrap().n, 0);
        assert!(try_take(&dir.join("missing"), 2).is_err());
        // Owned like the spool folder, whoever made them (probe run as root; the tests run as
        // root).
        if crate::sys::is_root() {
            use std::os::unix::fs::{chown, MetadataExt};
            let other = dir.join("other");
            std::fs::create_dir_all(&other).unwrap();
            chown(&other, Some(65534), Some(65534)).unwrap();
            let _held = try_take(&other, 1).unwrap().unwrap();
            let m = std::fs::metadata(other.join(".smarthost-slot.0")).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o640));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

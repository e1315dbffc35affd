//! The relay's claim on its spool: one `serve` per spool folder.
//!
//! Why: two relays on one spool (a second instance started by hand, a container restarted
//! beside the old one) would both deliver every message, and with `reuse_files` one could write
//! a new message over a file the other is still sending. `sendmail` and the `queue` commands
//! do not take it: they share the spool with the relay by design.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::sys;

/// The lock file's name in the spool folder.
const NAME: &str = "serve.lock";

/// ServeLock holds the spool for one relay until it is dropped (or the process dies).
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// claim takes the spool at `dir` for this relay; Ok(None) when another relay holds it.
pub fn claim(dir: &Path) -> io::Result<Option<ServeLock>> {
    let file = sys::open_lock_file(dir, &dir.join(NAME))?;
    Ok(sys::try_lock(&file)?.then_some(ServeLock { _file: file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_and_free_once_dropped() {
        let dir = std::env::temp_dir().join(format!("picorelay-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = claim(&dir).unwrap().expect("the first claim");
        assert!(claim(&dir).unwrap().is_none(), "a second relay is refused");
        drop(first);
        assert!(claim(&dir).unwrap().is_some(), "free again");
        // Made by root (the tests run as root) in a folder of another user: that user's.
        if crate::sys::is_root() {
            use std::os::unix::fs::{chown, MetadataExt};
            let other = dir.join("other");
            std::fs::create_dir_all(&other).unwrap();
            chown(&other, Some(65534), Some(65534)).unwrap();
            let _held = claim(&other).unwrap().unwrap();
            let m = std::fs::metadata(other.join(NAME)).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o640));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Who the relay runs as: decide from `[server] user` and the starting uid, hand
//! the spool to the service user, then drop root (setgroups, setgid, setuid in
//! sys.rs). Any failure on the way is a start-up error.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Config;
use crate::sys::{self, Account};

/// What start-up does about privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Started as root with `user` set: bind, read the key, then become this account.
    Drop(Account),
    /// Keep the current identity; the lines are warnings for the log.
    AsIs(Vec<String>),
}

/// plan looks at the process and the config; an unknown `user` while root is fatal.
pub fn plan(cfg: &Config) -> Result<Plan, String> {
    decide(
        sys::is_root(),
        sys::current_uid(),
        cfg.server.user.as_deref(),
        &cfg.path.display().to_string(),
        sys::lookup_user,
    )
}

/// decide is `plan` without the system: table-tested.
fn decide(
    root: bool,
    uid: u32,
    user: Option<&str>,
    file: &str,
    lookup: impl Fn(&str) -> Result<Account, String>,
) -> Result<Plan, String> {
    match (root, user) {
        (true, Some(name)) => {
            let acct = lookup(name).map_err(|e| format!("{file}: [server] user: {e}"))?;
            if acct.uid == 0 {
                return Ok(Plan::AsIs(vec![format!(
                    "[server] user = {name} is root: picorelay keeps root privileges; \
                     name an unprivileged account (e.g. picorelay)"
                )]));
            }
            Ok(Plan::Drop(acct))
        }
        (true, None) => Ok(Plan::AsIs(vec![
            "running as root without [server] user: a network daemon should not keep root; \
             set user = picorelay (or another unprivileged account)"
                .to_string(),
        ])),
        (false, Some(name)) => Ok(Plan::AsIs(match lookup(name) {
            Ok(a) if a.uid == uid => Vec::new(),
            Ok(_) => vec![format!(
                "[server] user = {name} is ignored: not started as root, running as uid {uid}"
            )],
            Err(e) => vec![format!(
                "[server] user is ignored: not started as root, running as uid {uid} ({e})"
            )],
        })),
        (false, None) => Ok(Plan::AsIs(Vec::new())),
    }
}

/// give_spool hands the spool folder, tmp/, queue/, corrupt/ and the files in them
/// to `acct` where root owns them (root created them, or a root `sendmail` ran
/// before the relay). Anything owned by someone else was set up by the
/// administrator and is left alone; a group other than root's is kept too.
pub fn give_spool(dir: &Path, acct: &Account) -> Result<(), String> {
    let mut paths = vec![dir.to_path_buf()];
    for sub in ["tmp", "queue", "corrupt"] {
        let d = dir.join(sub);
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot list {}: {e}", d.display()))?;
        paths.push(d);
        paths.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    // The flush trigger lives in the folder itself (the status socket is
    // created after the drop, by the service user).
    let trigger = dir.join(crate::delivery::FLUSH_TRIGGER);
    if trigger.exists() {
        paths.push(trigger);
    }
    for p in paths {
        give(&p, acct)?;
    }
    Ok(())
}

/// give chowns one path owned by root to `acct` (symlinks are not followed).
pub fn give(p: &Path, acct: &Account) -> Result<(), String> {
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        // Removed meanwhile (a message delivered by a previous run's leftovers): fine.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot stat {}: {e}", p.display())),
    };
    if m.uid() != 0 || m.file_type().is_symlink() {
        return Ok(());
    }
    let gid = (m.gid() == 0).then_some(acct.gid);
    std::os::unix::fs::lchown(p, Some(acct.uid), gid)
        .map_err(|e| format!("cannot give {} to {}: {e}", p.display(), acct.name))
}

/// check_spool_writable proves, after the drop, that the relay can create files
/// in the spool: better a clear start-up error than 452 for every message.
pub fn check_spool_writable(dir: &Path) -> Result<(), String> {
    for d in [dir.to_path_buf(), dir.join("tmp")] {
        let probe = d.join(format!(".write-test-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| {
            format!(
                "the spool folder {} is not writable by uid {}: {e}; give it to the service user",
                d.display(),
                sys::current_uid()
            )
        })?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Result<Account, String> {
        match name {
            "relay" => Ok(Account {
                name: "relay".into(),
                uid: 101,
                gid: 102,
            }),
            "root" => Ok(Account {
                name: "root".into(),
                uid: 0,
                gid: 0,
            }),
            _ => Err(format!("user {name}: no such user")),
        }
    }

    #[test]
    fn decide_table() {
        // (root, uid, user, expect: "drop" | "as-is" | "as-is+warn" | "error")
        let cases: &[(bool, u32, Option<&str>, &str)] = &[
            (true, 0, Some("relay"), "drop"),
            (true, 0, Some("missing"), "error"),
            (true, 0, Some("root"), "as-is+warn"),
            (true, 0, None, "as-is+warn"),
            (false, 101, Some("relay"), "as-is"),
            (false, 500, Some("relay"), "as-is+warn"),
            (false, 500, Some("missing"), "as-is+warn"),
            (false, 500, None, "as-is"),
        ];
        for &(root, uid, user, want) in cases {
            let got = match decide(root, uid, user, "f.ini", lookup) {
                Ok(Plan::Drop(a)) => {
                    assert_eq!(a.uid, 101);
                    "drop"
                }
                Ok(Plan::AsIs(w)) if w.is_empty() => "as-is",
                Ok(Plan::AsIs(_)) => "as-is+warn",
                Err(e) => {
                    assert!(e.starts_with("f.ini: [server] user: "), "{e}");
                    "error"
                }
            };
            assert_eq!(got, want, "{root} {uid} {user:?}");
        }
    }

    #[test]
    fn give_leaves_other_owners_alone_and_probe_works() {
        let dir = std::env::temp_dir().join(format!(
            "picorelay-priv-unit-{}-{}",
            std::process::id(),
            crate::message::now()
        ));
        for sub in ["tmp", "queue", "corrupt"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("queue").join("A1"), b"x").unwrap();
        assert!(check_spool_writable(&dir).is_ok());
        if sys::is_root() {
            let nobody = Account {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            };
            // Owned by another user already: untouched.
            std::os::unix::fs::chown(dir.join("corrupt"), Some(1234), Some(1234)).unwrap();
            give_spool(&dir, &nobody).unwrap();
            let owner = |p: &Path| {
                let m = std::fs::metadata(p).unwrap();
                (m.uid(), m.gid())
            };
            assert_eq!(owner(&dir), (65534, 65534));
            assert_eq!(owner(&dir.join("queue").join("A1")), (65534, 65534));
            assert_eq!(owner(&dir.join("corrupt")), (1234, 1234));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

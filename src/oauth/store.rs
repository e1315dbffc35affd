//! The refresh token file: read it, and replace it atomically (temporary name in the same
//! folder, fsync, rename, folder fsync) so a crash leaves the old token or the new one whole.
//!
//! The format is a few `key=value` lines; `#` starts a comment line:
//!
//! ```text
//! # picorelay OAuth refresh token (picorelay oauth login): keep it secret
//! refresh_token=0.AXoA...
//! signed_in=1796000000
//! saved=1796003600
//! ```
//!
//! A file holding nothing but a bare token on its first line is read too, so a token
//! obtained with another tool can be dropped in.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Longest token file we read: refresh tokens are a few KB at most.
const MAX_FILE: u64 = 64 * 1024;

/// What the token file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The refresh token; never printed.
    pub refresh_token: String,
    /// When a person signed in (`oauth login`), unix seconds.
    pub signed_in: Option<u64>,
    /// When this token was written (a login or a rotation), unix seconds.
    pub saved: Option<u64>,
}

/// parse reads the file's text; None when it holds no token.
pub fn parse(text: &str) -> Option<Stored> {
    let mut stored = Stored {
        refresh_token: String::new(),
        signed_in: None,
        saved: None,
    };
    let mut bare = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=').map(|(k, v)| (k.trim(), v)) {
            Some(("refresh_token", v)) => stored.refresh_token = v.trim().to_string(),
            Some(("signed_in", v)) => stored.signed_in = v.trim().parse().ok(),
            Some(("saved", v)) => stored.saved = v.trim().parse().ok(),
            // Tokens may contain '=' (base64 padding): a line that is no known key is a bare
            // token, taken only when it is the first thing in the file.
            _ if bare.is_none() && stored.refresh_token.is_empty() => bare = Some(line.to_string()),
            _ => {}
        }
    }
    if stored.refresh_token.is_empty() {
        stored.refresh_token = bare?;
    }
    let printable = stored.refresh_token.bytes().all(|b| b > b' ' && b < 0x7f);
    printable.then_some(stored)
}

/// format is the file's text.
pub fn format(s: &Stored) -> String {
    let mut out = String::from(
        "# picorelay OAuth refresh token, written by `picorelay oauth login` and replaced when\n\
         # the identity provider rotates it. Keep it secret (mode 0600).\n",
    );
    out.push_str(&format!("refresh_token={}\n", s.refresh_token));
    if let Some(t) = s.signed_in {
        out.push_str(&format!("signed_in={t}\n"));
    }
    if let Some(t) = s.saved {
        out.push_str(&format!("saved={t}\n"));
    }
    out
}

/// read returns the stored token; Ok(None) when there is no file (nobody signed in yet).
pub fn read(path: &Path) -> Result<Option<Stored>, String> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text)
        .map(Some)
        .ok_or_else(|| format!("{}: holds no refresh token", path.display()))
}

/// save replaces the file with `s`: written under a temporary name in the same folder with
/// mode 0600 (owned by `owner` when given: the service user, when root writes it), fsynced,
/// renamed over the old one, and the folder fsynced, so the new token is on disk before the
/// caller uses what came with it.
pub fn save(path: &Path, s: &Stored, owner: Option<(u32, u32)>) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "oauth-token".to_string());
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:016x}",
        std::process::id(),
        unique()
    ));
    let result = write_new(&tmp, s, owner)
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| File::open(dir).and_then(|d| d.sync_all()));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot save the refresh token: {e}", path.display())
    })
}

/// unique makes the temporary name's last part: 64 random bits. A counter from 0 repeats
/// the names of an earlier run with the same pid (PID 1 in every container start), and a
/// file a crash left under one of them made every later save fail (create_new: EEXIST).
/// Random rather than create + truncate or removing `.NAME.tmp.*` first: `oauth login`
/// run in a second container on the same volume is PID 1 too, and the name must not let
/// two processes write one temporary file, or one delete the other's before its rename.
/// create_new stays, so a collision fails the save rather than mixing two tokens.
fn unique() -> u64 {
    use ring::rand::SecureRandom;
    static N: AtomicU32 = AtomicU32::new(0);
    let mut b = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        // No random numbers from the system (never seen): the clock's nanoseconds differ
        // between runs, the counter within one.
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            u64::from(nanos) << 32 | u64::from(N.fetch_add(1, Ordering::Relaxed))
        }
    }
}

fn write_new(tmp: &Path, s: &Stored, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(format(s).as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parse_table() {
        let st = |rt: &str, si: Option<u64>, sa: Option<u64>| Stored {
            refresh_token: rt.to_string(),
            signed_in: si,
            saved: sa,
        };
        let cases: &[(&str, Option<Stored>)] = &[
            (
                "refresh_token=abc\nsigned_in=5\nsaved=7\n",
                Some(st("abc", Some(5), Some(7))),
            ),
            (
                "# c\n\nrefresh_token = a=b==\n",
                Some(st("a=b==", None, None)),
            ),
            (
                "1//0gLx-bare_token\n",
                Some(st("1//0gLx-bare_token", None, None)),
            ),
            ("  tok==  \r\n", Some(st("tok==", None, None))),
            ("", None),
            ("# only a comment\n", None),
            ("refresh_token=\n", None),
            ("refresh_token=has space\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), *want, "{text:?}");
        }
        let s = st("0.AXo-x_y=", Some(1), Some(2));
        assert_eq!(parse(&format(&s)), Some(s));
    }

    #[test]
    fn save_replaces_atomically_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("picorelay-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("oauth-token");
        assert_eq!(read(&path), Ok(None));
        for rt in ["first", "second"] {
            let s = Stored {
                refresh_token: rt.to_string(),
                signed_in: Some(1),
                saved: Some(2),
            };
            save(&path, &s, None).unwrap();
            assert_eq!(read(&path).unwrap().unwrap().refresh_token, rt);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("oauth-token")],
            "no temp leftovers"
        );
        let e = save(&dir.join("missing/oauth-token"), &parse("x").unwrap(), None).unwrap_err();
        assert!(e.contains("cannot save the refresh token"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A crash between creating the temporary file and the rename leaves it behind; a
    /// restart with the same pid (PID 1 in a container) must still save. 64 names: the old
    /// per-process counter is shared with the other tests of this process, so 0..4 alone
    /// could already be past.
    #[test]
    fn save_survives_a_stale_temp_file() {
        let dir = std::env::temp_dir().join(format!("picorelay-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("oauth-token");
        for n in 0..64 {
            let stale = dir.join(format!(".oauth-token.tmp.{}.{n}", std::process::id()));
            std::fs::write(stale, "refresh_token=from-a-crash\n").unwrap();
        }
        save(&path, &parse("new-token").unwrap(), None).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().refresh_token, "new-token");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

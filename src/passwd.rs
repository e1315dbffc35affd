//! The user database read straight from /etc/passwd, without NSS: what the
//! privilege drop and the sendmail personality need (name <-> uid, gid).
//!
//! Why not getpwnam(3): a statically linked glibc cannot load NSS modules (the
//! armv7 and riscv64 builds are static glibc), and the appliances picorelay is
//! for (routers, NAS boxes, small boards) keep their accounts in /etc/passwd,
//! never in LDAP or NIS. So every build reads the file itself, the same way, and
//! an account that only a directory service knows is "no such user".
//!
//! The drop keeps the primary group alone (`setgroups(1, &gid)` in sys.rs), so
//! /etc/group is not needed: no supplementary group is ever looked up.

use std::path::Path;

/// Where the accounts live on every Linux system.
pub const PASSWD: &str = "/etc/passwd";

/// One account line: the fields the relay uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A line that names the account asked for but cannot be used: the 1-based
/// line number and what is wrong, for an error the administrator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// What one line of passwd(5) is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line<'a> {
    /// Blank, a `#` comment, or a NIS compat line (`+name`, `-name`, `+@group`,
    /// `+`): nothing we look at; NIS is not consulted.
    Skip,
    /// `name:password:uid:gid:gecos:home:shell` with valid ids.
    Account(Entry),
    /// A line whose name is `name` but whose ids cannot be trusted.
    Bad(&'a str, String),
}

/// parse_line reads one line of /etc/passwd (without its newline).
fn parse_line(raw: &str) -> Line<'_> {
    let line = raw.trim_end_matches('\r').trim_start();
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return Line::Skip;
    }
    let mut fields = line.split(':');
    let name = fields.next().unwrap_or("");
    if name.is_empty() {
        return Line::Skip;
    }
    let _password = fields.next();
    let (uid, gid) = (fields.next(), fields.next());
    let id = |what: &str, v: Option<&str>| match v {
        None => Err(format!("no {what} field")),
        Some(v) => parse_id(v).ok_or_else(|| format!("{what} {v:?} is not a valid id")),
    };
    // gecos, home and shell may be missing at the end of the line: the relay
    // uses none of them, and login tools accept such lines too.
    match (id("uid", uid), id("gid", gid)) {
        (Ok(uid), Ok(gid)) => Line::Account(Entry {
            name: name.to_string(),
            uid,
            gid,
        }),
        (Err(e), _) | (_, Err(e)) => Line::Bad(name, e),
    }
}

/// parse_id accepts decimal digits only: no sign, no blank (an empty uid must
/// never read as 0, root), and not (uid_t)-1, which means "no id" to the kernel.
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

/// by_name finds the first account called exactly `name` in passwd text, as
/// getpwnam does. Ok(None): no such account; Err: its line is malformed (fail
/// closed rather than skip to a later line or guess an id).
pub fn by_name(text: &str, name: &str) -> Result<Option<Entry>, BadLine> {
    for (i, raw) in text.lines().enumerate() {
        match parse_line(raw) {
            Line::Account(e) if e.name == name => return Ok(Some(e)),
            Line::Bad(n, reason) if n == name => {
                return Err(BadLine {
                    line: i + 1,
                    reason,
                })
            }
            _ => {}
        }
    }
    Ok(None)
}

/// by_uid finds the first well-formed account with this uid, as getpwuid does.
pub fn by_uid(text: &str, uid: u32) -> Option<Entry> {
    text.lines().find_map(|raw| match parse_line(raw) {
        Line::Account(e) if e.uid == uid => Some(e),
        _ => None,
    })
}

/// valid_name tells whether `name` could be a passwd account name at all: a
/// colon, newline or NUL would make it match something else or nothing.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains([':', '\n', '\r', '\0'])
}

/// read loads the passwd file at `path`.
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A passwd as Debian, OpenWrt and a NIS-era box write them, with the
    /// trouble real files have.
    const PASSWD_TEXT: &str = "\
# /etc/passwd: comments and blank lines are skipped

root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
  indented:x:7:7::/:/bin/sh
pico:x:1001:1001::/home/pico:/bin/sh
picorelay:x:998:998:picorelay mail relay,,,:/var/spool/picorelay:/usr/sbin/nologin
crlf:x:1002:1002::/home/crlf:/bin/sh\r
short:x:1003:1003
noshell:x:1004:1004:::
a-very-long-account-name-beyond-thirty-two-characters:x:1005:1005::/home/long:/bin/sh
emptyuid:x::100::/:/bin/sh
neguid:x:-1:100::/:/bin/sh
plusuid:x:+5:100::/:/bin/sh
bigid:x:4294967296:100::/:/bin/sh
nouid:x:4294967295:100::/:/bin/sh
nogid
:x:1006:1006::/:/bin/sh
+nisuser::::::
-blocked::::::
+@netgroup
+
dup:x:2000:2000::/:/bin/sh
dup:x:2001:2001::/:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    #[test]
    fn by_name_table() {
        let ok = |uid, gid| Ok(Some((uid, gid)));
        let bad = |line: usize, reason: &str| {
            Err(BadLine {
                line,
                reason: reason.to_string(),
            })
        };
        type Want = Result<Option<(u32, u32)>, BadLine>;
        let cases: &[(&str, Want)] = &[
            ("root", ok(0, 0)),
            ("daemon", ok(1, 1)),
            ("indented", ok(7, 7)),
            // A name that is a prefix of another, and the other way round.
            ("pico", ok(1001, 1001)),
            ("picorelay", ok(998, 998)),
            ("picorela", Ok(None)),
            ("picorelayd", Ok(None)),
            ("crlf", ok(1002, 1002)),
            // Missing trailing fields: the ids are there, that is enough.
            ("short", ok(1003, 1003)),
            ("noshell", ok(1004, 1004)),
            (
                "a-very-long-account-name-beyond-thirty-two-characters",
                ok(1005, 1005),
            ),
            // Malformed ids fail closed with the line to fix.
            ("emptyuid", bad(12, "uid \"\" is not a valid id")),
            ("neguid", bad(13, "uid \"-1\" is not a valid id")),
            ("plusuid", bad(14, "uid \"+5\" is not a valid id")),
            ("bigid", bad(15, "uid \"4294967296\" is not a valid id")),
            ("nouid", bad(16, "uid \"4294967295\" is not a valid id")),
            ("nogid", bad(17, "no uid field")),
            // NIS compat lines are not accounts, and NIS is not asked.
            ("nisuser", Ok(None)),
            ("+nisuser", Ok(None)),
            ("blocked", Ok(None)),
            ("@netgroup", Ok(None)),
            ("", Ok(None)),
            // The first of two lines wins, as with getpwnam.
            ("dup", ok(2000, 2000)),
            ("nobody", ok(65534, 65534)),
            ("Root", Ok(None)),
            ("x", Ok(None)),
        ];
        for (name, want) in cases {
            let got = by_name(PASSWD_TEXT, name).map(|e| e.map(|e| (e.uid, e.gid)));
            assert_eq!(&got, want, "{name:?}");
        }
        assert_eq!(
            by_name(PASSWD_TEXT, "picorelay").unwrap().unwrap().name,
            "picorelay"
        );
    }

    #[test]
    fn by_uid_table() {
        let cases: &[(u32, Option<&str>)] = &[
            (0, Some("root")),
            (998, Some("picorelay")),
            (1001, Some("pico")),
            (2001, Some("dup")),
            (65534, Some("nobody")),
            (100, None),
            (4242, None),
            // The nameless line is skipped rather than named "".
            (1006, None),
        ];
        for (uid, want) in cases {
            assert_eq!(
                by_uid(PASSWD_TEXT, *uid).map(|e| e.name).as_deref(),
                *want,
                "uid {uid}"
            );
        }
    }

    #[test]
    fn names_that_cannot_be_accounts() {
        for (name, ok) in [
            ("picorelay", true),
            ("a.b-c_d$", true),
            ("", false),
            ("bad:name", false),
            ("bad\0name", false),
            ("two\nlines", false),
        ] {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn empty_and_comment_only_files() {
        for text in ["", "\n\n", "# nothing here\n", "+\n-\n"] {
            assert_eq!(by_name(text, "root"), Ok(None), "{text:?}");
            assert_eq!(by_uid(text, 0), None, "{text:?}");
        }
    }
}

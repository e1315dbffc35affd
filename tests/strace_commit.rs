//! The commit order, seen from the kernel (issue 7, item 5): under strace, each
//! "250 2.0.0 Ok: queued as ID" is written only after, in the same thread, the fsync of
//! the message file, its name in queue/ (the link of the unnamed file written in queue/,
//! the rename of a delivered message's file it overwrote, tmp/spare-OLD -> queue/ID, or the
//! rename tmp/ID -> queue/ID where unnamed files are not available) and the fsync of the
//! queue/ folder; and that nothing writes to the file between its fsync and its name.
//!
//! Needs strace (CI: `apt-get install -y strace`); without it, or where ptrace is not
//! allowed, the test says so and passes. tools/strace-commit.sh shows the same by hand.

mod common;

use common::smarthost::{Opts, Sink};
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The syscalls traced: the ones a commit is made of, and the reply.
const TRACE: &str =
    "trace=fsync,fdatasync,rename,renameat,renameat2,linkat,openat,write,pwrite64,sendto";

fn strace_works() -> bool {
    Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One traced call: (pid, name, the line).
fn calls(trace: &str) -> Vec<(String, String, String)> {
    trace
        .lines()
        .filter_map(|l| {
            let (pid, rest) = l.split_once(' ')?;
            let rest = rest.trim_start();
            // "<... fsync resumed>" halves carry no arguments we need: the call's start does.
            if rest.starts_with("<...") {
                return None;
            }
            let name = rest.split('(').next()?.to_string();
            Some((pid.to_string(), name, rest.to_string()))
        })
        .collect()
}

/// check_commit_order returns, per id, the four lines that prove the order, or why not.
fn check_commit_order(
    trace: &str,
    ids: &[String],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let calls = calls(trace);
    let mut proof = BTreeMap::new();
    for id in ids {
        let queued = format!("queued as {id}");
        let w = calls
            .iter()
            .position(|(_, n, l)| (n == "write" || n == "sendto") && l.contains(&queued))
            .ok_or_else(|| format!("{id}: no reply write found"))?;
        let pid = &calls[w].0;
        // Walk back in the same thread: the folder fsync, before it the link or rename,
        // before it the file fsync.
        let before = |end: usize, pred: &dyn Fn(&str, &str) -> bool| {
            (0..end)
                .rev()
                .find(|&i| calls[i].0 == *pid && pred(&calls[i].1, &calls[i].2))
        };
        let dest = format!("/queue/{id}");
        let dir_sync = before(w, &|n, l| {
            (n == "fsync" || n == "fdatasync") && l.contains("/queue>")
        })
        .ok_or_else(|| format!("{id}: no fsync of queue/ before the 250"))?;
        let named = |n: &str, l: &str| {
            (n.starts_with("rename") && renamed_from(l).is_some() || n == "linkat")
                && l.contains(&format!("{dest}\""))
        };
        let rename = before(dir_sync, &named).ok_or_else(|| {
            format!("{id}: no link or rename into queue/ before the folder fsync")
        })?;
        let file_sync = match linked_fd(&calls[rename].2) {
            // An unnamed file: the fsync of that descriptor, still unnamed (in queue/, deleted),
            // and the descriptor not reopened as another file in between.
            Some(fd) => {
                let sync = before(rename, &|n, l| {
                    (n == "fsync" || n == "fdatasync")
                        && l.contains(&format!("({fd}</"))
                        && l.contains("/queue/#")
                })
                .ok_or_else(|| format!("{id}: no fsync of the unnamed file before its link"))?;
                if calls[sync..rename]
                    .iter()
                    .any(|(_, n, l)| n == "openat" && l.contains(&format!("= {fd}<")))
                {
                    return Err(format!(
                        "{id}: descriptor {fd} reopened between fsync and link"
                    ));
                }
                if calls[sync..rename].iter().any(|(_, n, l)| {
                    (n.starts_with("write") || n.starts_with("pwrite"))
                        && l.contains(&format!("({fd}</"))
                }) {
                    return Err(format!("{id}: the unnamed file written after its fsync"));
                }
                sync
            }
            // A file in tmp/ (a new one, or a spare overwritten): the fsync of that path, and no
            // write to it after that fsync.
            None => {
                let src = renamed_from(&calls[rename].2).unwrap_or_default();
                let sync = before(rename, &|n, l| {
                    (n == "fsync" || n == "fdatasync") && l.contains(&format!("{src}>"))
                })
                .ok_or_else(|| format!("{id}: no fsync of {src} before the rename"))?;
                if calls[sync..rename].iter().any(|(_, n, l)| {
                    (n.starts_with("write") || n.starts_with("pwrite"))
                        && l.contains(&format!("{src}>"))
                }) {
                    return Err(format!("{id}: {src} written after its fsync"));
                }
                sync
            }
        };
        // Nothing in between undid it: no later rename or link of this id before the reply.
        if before(w, &|n, l| {
            (n.starts_with("rename") || n == "linkat") && l.contains(id.as_str())
        }) != Some(rename)
        {
            return Err(format!("{id}: renamed again before the 250"));
        }
        proof.insert(
            id.clone(),
            [file_sync, rename, dir_sync, w]
                .iter()
                .map(|&i| format!("{} {}", calls[i].0, calls[i].2))
                .collect(),
        );
    }
    Ok(proof)
}

/// A relay running under strace, with its trace written to a file.
struct Traced {
    dir: TempDir,
    strace: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
}

impl Traced {
    /// start runs the relay under strace with `extra` merged into its config; None (and a note) where
    /// strace cannot run.
    fn start(extra: &str) -> Option<Traced> {
        if !strace_works() {
            eprintln!("SKIPPED: strace is not installed or ptrace is not allowed here (CI: apt-get install -y strace)");
            return None;
        }
        let dir = TempDir::new("strace");
        let spool = dir.path().join("spool");
        let config = dir.path().join("picorelay.ini");
        let ini = merge_ini(
            &base_ini(&spool),
            &format!(
                "[server]\npid_file = {}\n[log]\nlevel = info\n",
                dir.path().join("relay.pid").display()
            ),
        );
        std::fs::write(&config, merge_ini(&ini, extra)).unwrap();
        let mut strace = Command::new("strace")
            .args(["-f", "-y", "-s", "65536", "-e", TRACE, "-o"])
            .arg(dir.path().join("trace.txt"))
            .arg(bin())
            .arg("-c")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        {
            let (log, stderr) = (Arc::clone(&log), strace.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut addr = None;
        wait_for("the traced relay to listen", || {
            addr = log
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.split("listening on ").nth(1)?.trim().parse().ok());
            addr.is_some()
        });
        Some(Traced {
            addr: addr.unwrap(),
            dir,
            strace,
            log,
        })
    }

    /// stop ends the relay and checks the order of every commit in `ids`; returns the proofs and the trace.
    fn stop(mut self, ids: &[String]) -> (BTreeMap<String, Vec<String>>, String) {
        let pid = std::fs::read_to_string(self.dir.path().join("relay.pid")).unwrap();
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.trim())
            .status()
            .unwrap();
        assert!(st.success());
        let st = self.strace.wait().unwrap();
        assert!(
            st.success(),
            "relay under strace: {st}: {:?}",
            self.log.lock().unwrap()
        );
        let trace = self.dir.path().join("trace.txt");
        let text = std::fs::read_to_string(&trace).unwrap();
        match check_commit_order(&text, ids) {
            Ok(proof) => {
                let (id, lines) = proof.iter().next().unwrap();
                eprintln!("{} messages checked; the first, {id}:", proof.len());
                for l in lines {
                    eprintln!("  {l}");
                }
                (proof, text)
            }
            Err(why) => panic!("{why}\n(trace kept in {})", keep(&trace).display()),
        }
    }
}

#[test]
fn each_250_follows_file_fsync_link_and_folder_fsync() {
    // Hold mode: no delivery, so the only renames are commits.
    let Some(relay) = Traced::start("") else {
        return;
    };
    let mut ids = Vec::new();
    for session in 0..2 {
        let mut c = Client::connect(relay.addr);
        c.greet();
        for i in 0..5 {
            let r = c.send_message(
                "a@b.test",
                &["c@d.test"],
                &message(&format!("s{session} m{i}"), "x"),
            );
            ids.push(queued_id(&r));
        }
        c.expect("QUIT", "221");
    }
    relay.stop(&ids);
}

/// With a smarthost, delivered messages' files are overwritten by new ones (tmp/spare-OLD renamed to
/// queue/NEW): the same order holds for them, with fdatasync as the file's sync.
#[test]
fn a_reused_file_is_synced_before_its_name_and_the_folder_before_the_250() {
    let sink = Sink::start(Opts::plain());
    let Some(relay) = Traced::start(&format!(
        "[smarthost]\nhost = {}\ntls = none\n[queue]\nreuse_files = yes\n",
        sink.addr()
    )) else {
        return;
    };
    let mut c = Client::connect(relay.addr);
    c.greet();
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = c.send_message("a@b.test", &["c@d.test"], &message(&format!("m{i}"), "x"));
        ids.push(queued_id(&r));
        // Delivered and removed before the next one, so its file can be kept for a later message.
        sink.wait_txns(i + 1);
        wait_for("the delivered message to leave queue/", || {
            !relay
                .dir
                .path()
                .join("spool/queue")
                .join(ids.last().unwrap())
                .exists()
        });
    }
    c.expect("QUIT", "221");
    let (proof, trace) = relay.stop(&ids);
    match check_spares_covered(&trace) {
        Ok(n) => {
            eprintln!("{n} spare(s) reused, each after a queue/ fsync that began after its rename")
        }
        Err(why) => panic!("{why}"),
    }
    let reused: Vec<&String> = proof
        .iter()
        .filter(|(_, lines)| lines.iter().any(|l| l.contains("/tmp/spare-")))
        .map(|(id, _)| id)
        .collect();
    assert!(
        reused.len() >= 2,
        "at most one of 6 messages overwrote a delivered one's file: {proof:#?}"
    );
}

/// check_spares_covered checks the power-loss rule of reuse: a delivered message's file, renamed
/// queue/ID -> tmp/spare-ID, is opened for overwriting only after an fsync of queue/ that began after
/// that rename has returned (so the removal of queue/ID is on disk: a power cut cannot bring the name
/// back over new bytes). Returns how many reuses it checked.
fn check_spares_covered(trace: &str) -> Result<usize, String> {
    let lines: Vec<&str> = trace.lines().collect();
    // Every fsync of queue/: (index of its start, index of its return).
    let mut syncs = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some((pid, rest)) = l.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if !(rest.starts_with("fsync(") && rest.contains("/queue>")) {
            continue;
        }
        if !rest.contains("<unfinished ...>") {
            syncs.push((i, i));
            continue;
        }
        let resumed = format!("{pid} <... fsync resumed>");
        if let Some(j) = (i + 1..lines.len()).find(|&j| lines[j].starts_with(&resumed)) {
            syncs.push((i, j));
        }
    }
    let mut checked = 0;
    for (i, l) in lines.iter().enumerate() {
        if !(l.contains(" openat(") && l.contains("/tmp/spare-") && l.contains("O_WRONLY")) {
            continue;
        }
        let spare = l.split('"').nth(1).ok_or("openat without a path")?;
        let name = spare.rsplit('/').next().unwrap_or_default();
        let id = name.strip_prefix("spare-").unwrap_or_default();
        let from = format!("/queue/{id}");
        // rename("FROM", "TO") or renameat2(AT_FDCWD, "FROM", AT_FDCWD, "TO", 0) (aarch64, under qemu).
        let renamed_out = |l: &str| {
            let paths: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            l.contains(" rename")
                && paths.len() >= 2
                && paths[0].ends_with(&from)
                && paths[1] == spare
        };
        let r = (0..i)
            .rev()
            .find(|&j| renamed_out(lines[j]))
            .ok_or_else(|| format!("{spare} opened, but no rename of queue/{id} to it before"))?;
        if !syncs.iter().any(|&(start, end)| start > r && end < i) {
            return Err(format!(
                "{spare} overwritten without a queue/ fsync between its rename and its reuse:\n{}\n{}",
                lines[r], l
            ));
        }
        checked += 1;
    }
    Ok(checked)
}

/// The reuse checker refuses a spare opened before a covering fsync of queue/.
#[test]
fn spare_checker_refuses_a_reuse_before_the_folder_fsync() {
    let good = r#"20 rename("/s/queue/OLD", "/s/tmp/spare-OLD") = 0
10 fsync(6</s/queue> <unfinished ...>
20 write(2<pipe:[1]>, "log", 3) = 3
10 <... fsync resumed>) = 0
11 openat(AT_FDCWD</>, "/s/tmp/spare-OLD", O_WRONLY|O_CLOEXEC) = 7</s/tmp/spare-OLD>
"#;
    assert_eq!(check_spares_covered(good), Ok(1));
    let renameat2 = good.replace(
        "20 rename(\"/s/queue/OLD\", \"/s/tmp/spare-OLD\") = 0",
        "20 renameat2(AT_FDCWD</>, \"/s/queue/OLD\", AT_FDCWD</>, \"/s/tmp/spare-OLD\", 0) = 0",
    );
    assert_eq!(check_spares_covered(&renameat2), Ok(1));
    let cases = [
        // The fsync began before the rename.
        good.replace("20 rename(\"/s/queue/OLD\", \"/s/tmp/spare-OLD\") = 0\n", "")
            .replace(
                "20 write(",
                "20 rename(\"/s/queue/OLD\", \"/s/tmp/spare-OLD\") = 0\n20 write(",
            ),
        // It had not returned yet.
        good.replace("10 <... fsync resumed>) = 0\n", "")
            .replace("\"/s/tmp/spare-OLD\", O_WRONLY|O_CLOEXEC) = 7</s/tmp/spare-OLD>\n", "\"/s/tmp/spare-OLD\", O_WRONLY|O_CLOEXEC) = 7</s/tmp/spare-OLD>\n10 <... fsync resumed>) = 0\n"),
        // No fsync at all.
        good.replace("10 fsync(6</s/queue> <unfinished ...>\n", "")
            .replace("10 <... fsync resumed>) = 0\n", ""),
    ];
    for bad in cases {
        assert!(check_spares_covered(&bad).is_err(), "{bad}");
    }
}

/// renamed_from is the source of a rename from tmp/: "/…/tmp/NAME".
fn renamed_from(line: &str) -> Option<&str> {
    let src = line.split('"').nth(1)?;
    src.contains("/tmp/").then_some(src)
}

/// linked_fd is N of a `linkat(…, "/proc/self/fd/N", …)` line: the unnamed file it names.
fn linked_fd(line: &str) -> Option<u32> {
    let rest = line.split("\"/proc/self/fd/").nth(1)?;
    rest.split('"').next()?.parse().ok()
}

/// keep copies a trace out of the temp dir (removed on drop) for a failing run.
fn keep(trace: &Path) -> std::path::PathBuf {
    let to = std::env::temp_dir().join(format!("picorelay-strace-{}.txt", std::process::id()));
    let _ = std::fs::copy(trace, &to);
    to
}

/// The checker itself must fail on a wrong order (a 250 before the folder fsync).
#[test]
fn checker_refuses_a_250_before_the_folder_fsync() {
    let good = r#"10 openat(AT_FDCWD</>, "/s/tmp/ID1", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0640) = 5</s/tmp/ID1>
10 write(5</s/tmp/ID1>, "picorelay-spool 1\n", 18) = 18
10 fsync(5</s/tmp/ID1>) = 0
10 rename("/s/tmp/ID1", "/s/queue/ID1") = 0
10 openat(AT_FDCWD</>, "/s/queue", O_RDONLY|O_CLOEXEC) = 5</s/queue>
11 write(2<pipe:[1]>, "log", 3) = 3
10 fsync(5</s/queue> <unfinished ...>
11 fsync(7</s/queue>) = 0
10 <... fsync resumed>) = 0
10 write(4<TCP:[1]>, "250 2.0.0 Ok: queued as ID1\r\n", 29) = 29
"#;
    let ids = vec!["ID1".to_string()];
    assert!(check_commit_order(good, &ids).is_ok());
    let cases = [
        // The reply before the folder fsync.
        good.replace(
            "10 write(4<TCP:[1]>, \"250 2.0.0 Ok: queued as ID1\\r\\n\", 29) = 29\n",
            "",
        )
        .replace(
            "10 fsync(5</s/queue> <unfinished ...>",
            "10 write(4<TCP:[1]>, \"250 2.0.0 Ok: queued as ID1\\r\\n\", 29) = 29\n10 fsync(5</s/queue> <unfinished ...>",
        ),
        // The folder fsync only in another thread.
        good.replace("10 fsync(5</s/queue> <unfinished ...>\n", "")
            .replace("10 <... fsync resumed>) = 0\n", ""),
        // No file fsync.
        good.replace("10 fsync(5</s/tmp/ID1>) = 0\n", ""),
        // No rename.
        good.replace("10 rename(\"/s/tmp/ID1\", \"/s/queue/ID1\") = 0\n", ""),
    ];
    for bad in cases {
        assert!(check_commit_order(&bad, &ids).is_err(), "{bad}");
    }

    // The same with an unnamed file linked into queue/.
    let good = r#"10 openat(AT_FDCWD</>, "/s/queue", O_WRONLY|O_CLOEXEC|O_TMPFILE, 0640) = 5</s/queue/#77>(deleted)
10 write(5</s/queue/#77>(deleted), "picorelay-spool 1\n", 18) = 18
10 fsync(5</s/queue/#77>(deleted)) = 0
10 linkat(AT_FDCWD</>, "/proc/self/fd/5", AT_FDCWD</>, "/s/queue/ID1", AT_SYMLINK_FOLLOW) = 0
11 write(2<pipe:[1]>, "log", 3) = 3
10 fsync(6</s/queue>) = 0
10 write(4<TCP:[1]>, "250 2.0.0 Ok: queued as ID1\r\n", 29) = 29
"#;
    assert!(check_commit_order(good, &ids).is_ok());
    let cases = [
        // No file fsync (only another descriptor's).
        good.replace(
            "10 fsync(5</s/queue/#77>(deleted)) = 0",
            "10 fsync(7</s/queue/#78>(deleted)) = 0",
        ),
        // The fsync after the link.
        good.replace("10 fsync(5</s/queue/#77>(deleted)) = 0\n", "")
            .replace(
                "11 write(2<pipe:[1]>",
                "10 fsync(5</s/queue/#77>(deleted)) = 0\n11 write(2<pipe:[1]>",
            ),
        // No link.
        good.replace(
            "10 linkat(AT_FDCWD</>, \"/proc/self/fd/5\", AT_FDCWD</>, \"/s/queue/ID1\", AT_SYMLINK_FOLLOW) = 0\n",
            "",
        ),
        // No folder fsync.
        good.replace("10 fsync(6</s/queue>) = 0\n", ""),
    ];
    for bad in cases {
        assert!(check_commit_order(&bad, &ids).is_err(), "{bad}");
    }

    // The same with a delivered message's file overwritten in place.
    let good = r#"10 openat(AT_FDCWD</>, "/s/tmp/spare-OLD", O_WRONLY|O_CLOEXEC) = 5</s/tmp/spare-OLD>
10 write(5</s/tmp/spare-OLD>, "picorelay-spool 2\n", 18) = 18
10 pwrite64(5</s/tmp/spare-OLD>, "00000000000000000005", 20, 26) = 20
10 fdatasync(5</s/tmp/spare-OLD>) = 0
10 rename("/s/tmp/spare-OLD", "/s/queue/ID1") = 0
10 fsync(6</s/queue>) = 0
10 write(4<TCP:[1]>, "250 2.0.0 Ok: queued as ID1\r\n", 29) = 29
"#;
    assert!(check_commit_order(good, &ids).is_ok());
    let cases = [
        // The length written after the sync.
        good.replace(
            "10 pwrite64(5</s/tmp/spare-OLD>, \"00000000000000000005\", 20, 26) = 20\n",
            "",
        )
        .replace(
            "10 rename(",
            "10 pwrite64(5</s/tmp/spare-OLD>, \"00000000000000000005\", 20, 26) = 20\n10 rename(",
        ),
        // Another file synced.
        good.replace(
            "10 fdatasync(5</s/tmp/spare-OLD>)",
            "10 fdatasync(7</s/tmp/spare-X>)",
        ),
    ];
    for bad in cases {
        assert!(check_commit_order(&bad, &ids).is_err(), "{bad}");
    }
}

#[test]
fn a_folder_that_cannot_be_fsynced_is_warned_about_not_a_reason_to_refuse_mail() {
    // Some filesystems (FUSE, network ones) answer EINVAL to an fsync of a folder: every fsync
    // of queue/ fails so here, and only those.
    if !strace_works() {
        eprintln!("SKIPPED: strace is not installed or ptrace is not allowed here (CI: apt-get install -y strace)");
        return;
    }
    let dir = TempDir::new("einval");
    let spool = dir.path().join("spool");
    let pid_file = dir.path().join("relay.pid");
    let ini = merge_ini(
        &base_ini(&spool),
        &format!(
            "[server]\npid_file = {}\n[log]\nlevel = info\n",
            pid_file.display()
        ),
    );
    let mut relay = Relay::prepared(dir, &ini);
    // Killing strace (what Relay does when dropped) leaves its tracee running: the relay's own
    // pid goes, whatever the test's outcome.
    struct KillByPidFile(std::path::PathBuf);
    impl Drop for KillByPidFile {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
    }
    let _reaper = KillByPidFile(pid_file);
    // The folders exist before strace is told which one to fail.
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o", "/dev/null", "-P"])
        .arg(spool.join("queue"))
        .args(["-e", "trace=fsync", "-e", "inject=fsync:error=EINVAL", "--"])
        .arg(bin())
        .arg("-c")
        .arg(&relay.config)
        .arg("serve");
    relay.spawn_with(cmd);
    for n in 0..3 {
        let id = relay.submit(
            "a@example.com",
            &["b@example.org"],
            &message("einval", &n.to_string()),
        );
        assert!(relay.queue_ids().contains(&id));
    }
    let log = relay.log_text();
    assert_eq!(
        log.matches("cannot fsync a folder (EINVAL)").count(),
        1,
        "warned once: {log}"
    );
}

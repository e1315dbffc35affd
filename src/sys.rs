//! All of libc: signals through a self-pipe, poll, process ids and users.
//!
//! Every `unsafe` block of picorelay lives here, each with a `// SAFETY:` line.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::passwd;

/// Signals the relay reacts to, as seen by the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit.
    Terminate,
    /// SIGHUP: reload.
    Reload,
    /// SIGUSR1: flush the queue.
    Flush,
}

static TERMINATE: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);
static FLUSH: AtomicBool = AtomicBool::new(false);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGTERM | libc::SIGINT => TERMINATE.store(true, Ordering::SeqCst),
        libc::SIGHUP => RELOAD.store(true, Ordering::SeqCst),
        libc::SIGUSR1 => FLUSH.store(true, Ordering::SeqCst),
        _ => {}
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid local byte.
        unsafe {
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// The read end of the self-pipe that signal handlers write to, so that `poll`
/// in the accept loop wakes at once on a signal.
pub struct SignalPipe {
    read_fd: RawFd,
}

impl SignalPipe {
    /// SignalPipe::install sets handlers for SIGTERM, SIGINT, SIGHUP and SIGUSR1,
    /// and ignores SIGPIPE (a peer closing mid-write must give EPIPE, not kill us).
    pub fn install() -> io::Result<SignalPipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds points to two writable c_ints, as pipe2 requires.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        WAKE_FD.store(fds[1], Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            set_handler(sig, on_signal as *const () as libc::sighandler_t)?;
        }
        set_handler(libc::SIGPIPE, libc::SIG_IGN)?;
        Ok(SignalPipe { read_fd: fds[0] })
    }

    /// SignalPipe::take returns the signals that arrived since the last call,
    /// emptying the pipe.
    pub fn take(&self) -> Vec<Signal> {
        let mut buf = [0u8; 64];
        // SAFETY: buf is a valid writable buffer of the given length; the fd is non-blocking.
        while unsafe {
            libc::read(
                self.read_fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        } > 0
        {}
        let mut out = Vec::new();
        if TERMINATE.swap(false, Ordering::SeqCst) {
            out.push(Signal::Terminate);
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            out.push(Signal::Reload);
        }
        if FLUSH.swap(false, Ordering::SeqCst) {
            out.push(Signal::Flush);
        }
        out
    }

    /// SignalPipe::fd is the descriptor to include in `poll_readable`.
    pub fn fd(&self) -> RawFd {
        self.read_fd
    }
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: sigaction is zero-initialisable plain data; we fill the fields we need
    // and pass valid pointers; SA_RESTART keeps blocking calls in other threads going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// poll_readable waits until one of `fds` is readable or `timeout` passes and
/// returns the indexes of the readable ones (empty on timeout or EINTR).
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfds is a valid array of pollfd of the length we pass.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(err);
    }
    Ok(pfds
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect())
}

/// set_backlog raises a listening socket's accept backlog (std binds with
/// 128): a burst of connects then waits in the kernel instead of being dropped
/// and retried a second later. Linux caps it at net.core.somaxconn.
pub fn set_backlog<T: AsRawFd>(listener: &T, backlog: i32) -> io::Result<()> {
    // SAFETY: listen on a descriptor we own that is already listening only
    // updates its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// raise_fd_limit lifts the soft limit on open descriptors to the hard one and returns both
/// limits as they are afterwards (soft, hard). Why: every session holds a socket and the
/// forwarder its connections and files, and the usual soft limit (1024) is below what a large
/// `workers` needs; past it, accept fails and devices wait unanswered.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        r = raised;
    }
    // rlim_t is 32 bits wide on some of the targets (i686, armv7 with older libcs).
    #[allow(clippy::unnecessary_cast)]
    Ok((r.rlim_cur as u64, r.rlim_max as u64))
}

/// give_like_folder gives a file the owner and group of the folder it is in, when they differ
/// and this process may (root); else at least the group. Best effort. Why: a file root makes
/// in the spool (a relay started as root once, `probe` run as root) must still be opened by
/// the service user, who owns the spool, without being readable by everybody.
pub fn give_like_folder(file: &std::fs::File, dir: &std::path::Path) {
    use std::os::unix::fs::{fchown, MetadataExt};
    let (Ok(owner), Ok(mine)) = (std::fs::metadata(dir), file.metadata()) else {
        return;
    };
    if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid())
        && fchown(file, Some(owner.uid()), Some(owner.gid())).is_err()
    {
        let _ = fchown(file, None, Some(owner.gid()));
    }
}

/// open_lock_file opens a lock file in the spool folder `dir` read-only (enough for flock),
/// creating it first when missing, mode 0640 and owned like the folder (`give_like_folder`).
/// Read-only: no file kept open for writing stops the spool's filesystem from being remounted
/// read-only; and a file root made (a relay or `probe` started as root once) is still opened
/// and locked by the service user. Links are not followed.
pub fn open_lock_file(dir: &std::path::Path, path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let read_only = || {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match read_only() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let created = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            give_like_folder(&created, dir);
            read_only()
        }
        other => other,
    }
}

/// release_free_memory hands freed heap memory back to the system where the C library keeps
/// it (glibc); elsewhere it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// pid_alive tells whether a process with this id exists (signal 0 probe).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence/permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// fd_of is a small helper so callers need not import AsRawFd.
pub fn fd_of<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}

/// A system account: what privilege dropping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// lookup_user finds `name` in /etc/passwd, read directly (passwd.rs says why
/// not through NSS).
pub fn lookup_user(name: &str) -> Result<Account, String> {
    lookup_user_in(Path::new(passwd::PASSWD), name)
}

/// lookup_user_in is `lookup_user` on another passwd file (tests).
fn lookup_user_in(file: &Path, name: &str) -> Result<Account, String> {
    if !passwd::valid_name(name) {
        return Err(format!("user {name:?}: invalid name"));
    }
    let text = passwd::read(file).map_err(|e| format!("user {name}: {e}"))?;
    match passwd::by_name(&text, name) {
        Ok(Some(e)) => Ok(Account {
            name: e.name,
            uid: e.uid,
            gid: e.gid,
        }),
        Ok(None) => Err(format!("user {name}: no such user in {}", file.display())),
        Err(bad) => Err(format!(
            "user {name}: {} line {}: {}",
            file.display(),
            bad.line,
            bad.reason
        )),
    }
}

/// current_uid is the real user id of this process.
pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// effective_uid is the user id this process acts as (files it creates are this user's).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// is_root tells whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// drop_privileges switches to `acct` in the only safe order — setgroups,
/// setgid, setuid — and verifies that root cannot be regained. Any failure is
/// fatal for the caller.
pub fn drop_privileges(acct: &Account) -> Result<(), String> {
    let gid = acct.gid as libc::gid_t;
    // SAFETY: setgroups reads one gid from a valid pointer; setgid/setuid take plain ids.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(format!(
                "setgroups({}): {}",
                acct.gid,
                io::Error::last_os_error()
            ));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!(
                "setgid({}): {}",
                acct.gid,
                io::Error::last_os_error()
            ));
        }
        if libc::setuid(acct.uid as libc::uid_t) != 0 {
            return Err(format!(
                "setuid({}): {}",
                acct.uid,
                io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: the id getters cannot fail; setuid(0) is expected to fail now.
    let (uid, euid, gid_now, egid, regained) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            acct.uid != 0 && libc::setuid(0) == 0,
        )
    };
    if uid != acct.uid || euid != acct.uid || gid_now != acct.gid || egid != acct.gid || regained {
        return Err(format!(
            "privileges did not drop to {} ({}:{})",
            acct.name, acct.uid, acct.gid
        ));
    }
    Ok(())
}

/// restrict_umask narrows the process umask to at least `bits` (e.g. 0o027),
/// keeping whatever tighter bits it already has: files the relay creates then
/// never end up group-writable or world-readable whatever umask it inherited.
pub fn restrict_umask(bits: u32) {
    // SAFETY: umask has no preconditions and cannot fail; called twice to read
    // the old value, on the main thread before any other thread exists.
    unsafe {
        let old = libc::umask(0o077);
        libc::umask(old | bits as libc::mode_t);
    }
}

/// try_lock takes an exclusive advisory lock on `f` without waiting (flock LOCK_EX |
/// LOCK_NB): Ok(false) when another open file description holds it. The kernel releases it
/// when the file is closed, also when the process dies.
pub fn try_lock(f: &std::fs::File) -> io::Result<bool> {
    // SAFETY: the descriptor is open for the lifetime of `f`; flock takes no pointers.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// lock takes an exclusive advisory lock on `f` (flock LOCK_EX), waiting for another open
/// file description that holds it: two descriptors opened apart conflict even within one
/// process. The kernel releases it when the file is closed, also when the process dies.
pub fn lock(f: &std::fs::File) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for the lifetime of `f`; flock takes no pointers.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// open_unnamed creates a file without a name in `dir` (O_TMPFILE): nothing
/// in any folder changes until `link_unnamed` gives it one, and a crash or a
/// failure before that leaves nothing behind. Filesystems without O_TMPFILE
/// answer EOPNOTSUPP (or EISDIR on old kernels).
pub fn open_unnamed(dir: &Path, mode: u32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

/// link_unnamed names a file from `open_unnamed` as `to`, never over an
/// existing file (EEXIST). Through /proc/self/fd (AT_SYMLINK_FOLLOW), which
/// needs no privilege, unlike AT_EMPTY_PATH.
pub fn link_unnamed(file: &std::fs::File, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: both paths are NUL-terminated and outlive the call, which only reads them.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// rename_noreplace renames `from` to `to` unless `to` exists, in one step
/// (renameat2 RENAME_NOREPLACE): AlreadyExists then, and nothing is replaced.
/// Unsupported (a filesystem or kernel without the flag): Unsupported, and the
/// caller checks and renames itself.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated and outlive the call; the raw
    // syscall (musl's libc has no renameat2 wrapper everywhere) only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "rename without replace is not supported here",
        )),
        _ => Err(e),
    }
}

/// on_ram_filesystem tells whether `path` lives on tmpfs or ramfs (OpenWrt's
/// /tmp and /var): mail there is lost on reboot.
pub fn on_ram_filesystem(path: &std::path::Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    matches!(fs_magic(path), Some(TMPFS_MAGIC | RAMFS_MAGIC))
}

/// fs_magic is the filesystem type (statfs f_type) of `path`, None when it cannot be asked.
fn fs_magic(path: &std::path::Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into a zeroed struct we own; cpath is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(cpath.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_type as i64)
    }
}

/// ext4_without_journal tells whether `path` lives on an ext2/3/4 filesystem that has no journal (or
/// whose journal cannot be seen: ext4 registers each internal journal as /proc/fs/jbd2/DEV-8).
pub fn ext4_without_journal(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    if fs_magic(path) != Some(EXT4_SUPER_MAGIC) {
        return false;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return true;
    };
    let dev = meta.dev();
    let sysfs = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let name = std::fs::canonicalize(sysfs)
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    !name.is_some_and(|n| std::path::Path::new(&format!("/proc/fs/jbd2/{n}-8")).exists())
}

/// sd_notify sends one state message to systemd over $NOTIFY_SOCKET; nothing
/// happens when the variable is unset (not started by systemd).
pub fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket namespace (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        log::debug!("sd_notify failed: {e}");
    }
}

/// monotonic_usec is CLOCK_MONOTONIC in microseconds (for RELOADING=1).
pub fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime writes into a zeroed timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    }
}

/// current_user_name is the login name of the real user id, from /etc/passwd
/// as `lookup_user` reads it; None when the id has no entry there.
pub fn current_user_name() -> Option<String> {
    let text = passwd::read(Path::new(passwd::PASSWD)).ok()?;
    passwd::by_uid(&text, current_uid())
        .map(|e| e.name)
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_types() {
        // /proc is procfs, /dev/shm tmpfs: neither is an ext4, with or without a journal.
        assert!(!ext4_without_journal(std::path::Path::new("/proc")));
        assert!(!ext4_without_journal(std::path::Path::new("/no/such/dir")));
        if std::path::Path::new("/dev/shm").is_dir() {
            assert!(on_ram_filesystem(std::path::Path::new("/dev/shm")));
            assert!(!ext4_without_journal(std::path::Path::new("/dev/shm")));
        }
    }

    #[test]
    fn lookup_root_and_missing() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup_user("no-such-user-picorelay")
            .unwrap_err()
            .contains("no such user"));
        assert!(lookup_user("bad\0name").is_err());
    }

    #[test]
    fn lookup_user_in_names_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("picorelay-passwd-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("passwd");
        std::fs::write(
            &file,
            "root:x:0:0::/root:/bin/sh\npicorelay:x::998::/:/bin/false\n",
        )
        .unwrap();
        let f = file.display();
        type Want = Result<(u32, u32), String>;
        let cases: &[(&str, Want)] = &[
            ("root", Ok((0, 0))),
            (
                "picorelay",
                Err(format!(
                    "user picorelay: {f} line 2: uid \"\" is not a valid id"
                )),
            ),
            ("nobody", Err(format!("user nobody: no such user in {f}"))),
            ("a:b", Err("user \"a:b\": invalid name".to_string())),
        ];
        for (name, want) in cases {
            let got = lookup_user_in(&file, name).map(|a| (a.uid, a.gid));
            assert_eq!(&got, want, "{name:?}");
        }
        let missing = lookup_user_in(&dir.join("none"), "root").unwrap_err();
        assert!(missing.starts_with("user root: cannot read "), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sd_notify_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("picorelay-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

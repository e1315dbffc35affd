//! All of libc: signals through a self-pipe, poll, process ids and users.
//!
//! Every `unsafe` block of picorelay lives here, each with a `// SAFETY:` line.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

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

/// pid_alive tells whether a process with this id exists (signal 0 probe).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence/permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// send_signal sends `sig` to process `pid`.
pub fn send_signal(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fd_of is a small helper so callers need not import AsRawFd.
pub fn fd_of<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}

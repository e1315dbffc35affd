#!/usr/bin/env python3
"""io-micro.py — what one durable message costs the disk under several commit patterns.

    tools/io-micro.py DIR [N] [STAT]

Writes N (default 500) messages of 4.4 KB in a scratch folder under DIR, each
made durable the way the pattern says, the previous one removed as a delivered
message is, and prints, per pattern, the write I/Os and KB (1000 bytes)
written per message at the block device holding DIR (/sys/dev/block/MAJ:MIN/
stat, `sync` before and after, nothing subtracted), and the journal commits
per message when the filesystem is a journaled ext4 (/proc/fs/jbd2/*/info).
STAT names the block device's stat file where DIR's device number has none (btrfs:
/sys/block/loopN/stat). Run it on a quiet device (a loop-mounted image is the cleanest). Patterns:

  tmp-rename   write tmp/X, fsync, rename to q/X, fsync q/  (picorelay where O_TMPFILE is missing)
  unnamed-link O_TMPFILE in q/, write, fsync, linkat q/X, fsync q/  (picorelay)
  one-fsync    create q/X, write, fsync  (Postfix: no folder fsync)
  link-first   O_TMPFILE, write, linkat q/X, fsync, fsync q/  (one commit, but a crash can leave a
               partial file named in q/: not picorelay's order)
  reuse        a delivered file renamed to tmp/ is overwritten in place once a later fsync of q/
               covered that rename, fdatasync, renamed into q/, fsync q/ (picorelay with
               [queue] reuse_files; a new unnamed file when no spare is ready)
"""
import ctypes, os, shutil, sys, time

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400


def link_fd(fd, dst):
    if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, dst.encode(), AT_SYMLINK_FOLLOW):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def device(path):
    st = os.stat(path)
    sysdir = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    name = os.path.basename(os.path.realpath(sysdir))
    return sysdir + "/stat", name


def journal(name):
    for p in (f"/proc/fs/jbd2/{name}-8/info", f"/proc/fs/jbd2/{name}/info"):
        if os.path.exists(p):
            return p
    return None


def counters(stat, jinfo):
    os.sync()
    f = open(stat).read().split()
    commits = int(open(jinfo).read().split()[0]) if jinfo else 0
    return int(f[4]), int(f[6]), commits


def run(base, mode, n, stat, jinfo):
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base + "/tmp")
    os.makedirs(base + "/q")
    q = os.open(base + "/q", os.O_RDONLY | os.O_DIRECTORY)
    data = b"h" * 300 + b"x" * 4096
    pending, ready = [], []  # spares: renamed out of q/; renamed and covered by a q/ fsync
    prev = None
    w0, s0, c0 = counters(stat, jinfo)
    t = time.time()
    for i in range(n):
        name = f"{base}/q/m{i}"
        if mode == "tmp-rename":
            fd = os.open(f"{base}/tmp/m{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, data); os.fsync(fd); os.close(fd)
            os.rename(f"{base}/tmp/m{i}", name); os.fsync(q)
        elif mode == "unnamed-link":
            fd = os.open(base + "/q", os.O_WRONLY | os.O_TMPFILE, 0o640)
            os.write(fd, data); os.fsync(fd); link_fd(fd, name); os.close(fd); os.fsync(q)
        elif mode == "one-fsync":
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, data); os.fsync(fd); os.close(fd)
        elif mode == "link-first":
            fd = os.open(base + "/q", os.O_WRONLY | os.O_TMPFILE, 0o640)
            os.write(fd, data); link_fd(fd, name); os.fsync(fd); os.close(fd); os.fsync(q)
        elif mode == "reuse":
            if ready:
                spare = ready.pop()
                fd = os.open(spare, os.O_WRONLY)
                os.pwrite(fd, data, 0); os.fdatasync(fd); os.close(fd)
                os.rename(spare, name)
            else:
                fd = os.open(base + "/q", os.O_WRONLY | os.O_TMPFILE, 0o640)
                os.write(fd, data); os.fsync(fd); link_fd(fd, name); os.close(fd)
            os.fsync(q)
            ready += pending
            pending = []
            if prev:
                pending.append(f"{base}/tmp/spare-{i}")
                os.rename(prev, pending[-1])
            prev = name
            continue
        if prev:
            os.unlink(prev)
        prev = name
    elapsed = time.time() - t
    w1, s1, c1 = counters(stat, jinfo)
    os.close(q)
    shutil.rmtree(base, ignore_errors=True)
    commits = f", {(c1 - c0) / n:.2f} journal commits" if jinfo else ""
    print(f"{mode:13} {(w1 - w0) / n:5.2f} write I/Os, {(s1 - s0) * 512 / n / 1000:5.1f} KB{commits}"
          f" per message; {elapsed / n * 1000:.2f} ms each")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    stat, name = device(top) if len(sys.argv) < 4 else (sys.argv[3], os.path.basename(os.path.dirname(sys.argv[3])))
    jinfo = journal(name)
    print(f"{n} messages per pattern on {name} ({top}){', journaled' if jinfo else ''}")
    for mode in ("tmp-rename", "unnamed-link", "one-fsync", "link-first", "reuse"):
        run(os.path.join(top, f"io-micro-{os.getpid()}"), mode, n, stat, jinfo)


main()

#!/bin/sh
# backlog.sh — what a large backlog costs the relay: time to listen, resident memory, and CPU
# while idle (hold mode: nothing is sent), with N queued messages.
#
#   tools/backlog.sh BIN [N]      (N default 50000; BIN e.g. target/release/picorelay)
#
# Builds a spool of N copies of one small message under a scratch folder (kept between runs,
# rebuilt when N changes), starts BIN on it with a cold page cache (root: drop_caches) and
# prints: seconds until "listening on", VmRSS after 3 s, and CPU ticks used over 10 idle
# seconds (100 ticks = one core).
set -eu
BIN=$(realpath "$1")
N=${2:-50000}
D=${TMPDIR:-/tmp}/picorelay-backlog
if [ "$(cat "$D/n" 2>/dev/null)" != "$N" ]; then
    rm -rf "$D"; mkdir -p "$D"
    printf '[server]\nlisten = 127.0.0.1:0\nhostname = relay.test\n[smarthost]\nhost =\n[queue]\ndir = %s/spool\n[log]\nlevel = info\n' "$D" > "$D/p.ini"
    printf 'Subject: backlog\n\nbody\n' | "$BIN" -c "$D/p.ini" sendmail root@example.org
    python3 - "$D/spool/queue" "$N" <<'PY'
import os, sys
q, n = sys.argv[1], int(sys.argv[2])
src = os.listdir(q)[0]
data = open(os.path.join(q, src), 'rb').read()
for i in range(1, n):
    name = f"{src[:-8]}{i:08d}"
    with open(os.path.join(q, name), 'wb') as f:
        f.write(data)
PY
    echo "$N" > "$D/n"
fi
sync
[ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N)
"$BIN" -c "$D/p.ini" serve 2> "$D/log" &
PID=$!
while ! grep -q 'listening on' "$D/log"; do sleep 0.05; done
up=$(date +%s.%N)
sleep 3
rss=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
t0=$(awk '{print $14+$15}' /proc/$PID/stat)
sleep 10
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
kill $PID; wait $PID 2>/dev/null || true
printf '%s, %s queued: listening after %.2f s, VmRSS %s KiB, idle CPU %s ticks in 10 s\n' \
    "$1" "$N" "$(echo "$up - $start" | bc)" "$rss" "$((t1 - t0))"

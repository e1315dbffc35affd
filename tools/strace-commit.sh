#!/bin/bash
# strace-commit.sh — shows, from the kernel's side, that picorelay answers
# "250 2.0.0 Ok: queued as ID" only after the message file's fsync, its name in
# queue/ (the link of the unnamed file it wrote in queue/, the rename of a
# delivered message's file it overwrote, tmp/spare-OLD -> queue/ID, or the rename
# tmp/ID -> queue/ID where unnamed files are not available) and the fsync of the
# queue/ folder, in that order, in the thread that writes the 250.
#
#   tools/strace-commit.sh [BINARY] [MESSAGES]
#
# BINARY defaults to target/debug/picorelay (built when missing); MESSAGES to 5.
# Needs strace (Debian/Ubuntu: apt-get install -y strace) and bash. Runs the relay
# in hold mode on a free loopback port with a throwaway spool; leaves nothing behind.
# Exit 0 when every 250 was preceded by the three steps; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/picorelay}
count=${2:-5}
command -v strace >/dev/null || { echo "strace is not installed (apt-get install -y strace)" >&2; exit 2; }
[ -x "$bin" ] || cargo build --locked
dir=$(mktemp -d /tmp/picorelay-strace.XXXXXX)
cleanup() {
	[ -s "$dir/relay.pid" ] && kill "$(cat "$dir/relay.pid")" 2>/dev/null
	[ -n "${tracer:-}" ] && wait "$tracer" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
cat >"$dir/picorelay.ini" <<INI
[server]
listen = 127.0.0.1:0
hostname = relay.test
workers = 2
pid_file = $dir/relay.pid
[queue]
dir = $dir/spool
[log]
level = info
file = $dir/relay.log
INI
strace -f -y -s 65536 -e trace=fsync,fdatasync,rename,renameat,renameat2,linkat,openat,write,pwrite64,sendto \
	-o "$dir/trace.txt" "$bin" -c "$dir/picorelay.ini" serve &
tracer=$!
for _ in $(seq 100); do
	port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/relay.log" 2>/dev/null | head -1 || true)
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "${port:-}" ] || { echo "the relay did not start" >&2; exit 1; }

# One pipelined session: EHLO, MESSAGES transactions, QUIT.
exec 3<>"/dev/tcp/127.0.0.1/$port"
{
	printf 'EHLO strace.test\r\n'
	for i in $(seq "$count"); do
		printf 'MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n'
		printf 'Subject: strace %s\r\n\r\nbody\r\n.\r\n' "$i"
	done
	printf 'QUIT\r\n'
} >&3
acked=$(timeout 30 cat <&3 | tr -d '\r' | grep -c '^250 2.0.0 Ok: queued as' || true)
exec 3<&-
echo "acknowledged: $acked of $count"
kill -TERM "$(cat "$dir/relay.pid")"
wait "$tracer" || true
tracer=

# Per thread (strace's pid column): file fsync -> link or rename -> folder fsync -> the 250.
awk -v tmp="$dir/spool/tmp/" -v queue="$dir/spool/queue" '
	function id_after(s, key,   t) { t = substr(s, index(s, key) + length(key)); sub(/[^0-9A-Za-z].*/, "", t); return t }
	# A file in tmp/: tmp/ID, or a delivered message'"'"'s file overwritten in place, tmp/spare-OLD.
	function name_after(s, key,   t) { t = substr(s, index(s, key) + length(key)); sub(/[^0-9A-Za-z-].*/, "", t); return t }
	$2 ~ /^<\.\.\./ { next }
	{ pid = $1; call = $2; sub(/\(.*/, "", call) }
	(call == "fsync" || call == "fdatasync") && index($0, tmp) {
		name = name_after($0, tmp); synced[pid, name] = $0; next
	}
	(call == "write" || call == "pwrite64") && index($0, tmp) { delete synced[pid, name_after($0, tmp)]; next }
	# An unnamed file (O_TMPFILE in queue/): its descriptor is fsynced, then linked.
	(call == "fsync" || call == "fdatasync") && index($0, queue "/#") {
		fd = substr($0, index($0, "(") + 1); sub(/<.*/, "", fd); unnamed[pid, fd] = $0; next
	}
	call == "openat" { fd = $0; sub(/.*= /, "", fd); sub(/<.*/, "", fd); delete unnamed[pid, fd] }
	(call == "write" || call == "pwrite64") && index($0, queue "/#") {
		fd = substr($0, index($0, "(") + 1); sub(/<.*/, "", fd); delete unnamed[pid, fd]; next
	}
	call == "linkat" && index($0, "/proc/self/fd/") && index($0, queue "/") {
		fd = substr($0, index($0, "/proc/self/fd/") + 14); sub(/".*/, "", fd)
		id = id_after(substr($0, index($0, queue "/")), queue "/")
		if ((pid, fd) in unnamed) { step[pid, id] = 2; proof[pid, id] = unnamed[pid, fd] "\n" $0; last[pid] = id }
		next
	}
	call ~ /^rename/ && index($0, tmp) && index($0, queue "/") {
		name = name_after($0, tmp); id = id_after(substr($0, index($0, queue "/")), queue "/")
		if ((pid, name) in synced) { step[pid, id] = 2; proof[pid, id] = synced[pid, name] "\n" $0; last[pid] = id }
		next
	}
	(call == "fsync" || call == "fdatasync") && index($0, queue ">") {
		id = last[pid]
		if (id != "" && step[pid, id] == 2) { step[pid, id] = 3; proof[pid, id] = proof[pid, id] "\n" $0 }
		next
	}
	# One write may carry the replies of several pipelined transactions.
	(call == "write" || call == "sendto") && index($0, "queued as ") {
		rest = $0
		while ((i = index(rest, "queued as ")) > 0) {
			id = id_after(rest, "queued as "); rest = substr(rest, i + 10)
			if (step[pid, id] == 3) { ok++; print "OK " id ":\n" proof[pid, id] "\n" pid " " call "(... 250 2.0.0 Ok: queued as " id " ...)\n" }
			else { bad++; print "FAIL " id ": 250 written at step " step[pid, id] + 0 " of 3:\n" $0 "\n" }
		}
	}
	END {
		printf "%d acknowledgement(s) after fsync, link or rename, folder fsync; %d not\n", ok, bad
		exit (bad > 0 || ok == 0)
	}
' "$dir/trace.txt"

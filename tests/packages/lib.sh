# Shared by the package tests: counters, one line per check, a summary.
# Sourced (POSIX sh); each check prints "ok   …" or "FAIL …" with the output of
# the failed command indented below it.
PASS=0
FAIL=0
LOG=$(mktemp "${TMPDIR:-/tmp}/picorelay-pkgtest.XXXXXX")
ok() { PASS=$((PASS + 1)); printf 'ok   %s\n' "$1"; }
bad() {
	FAIL=$((FAIL + 1)); printf 'FAIL %s\n' "$1"
	[ -s "$LOG" ] && tail -n 25 "$LOG" | sed 's/^/     | /'
	return 0
}
# t DESC CMD...: passes when CMD exits 0.
t() { _d=$1; shift; if "$@" >"$LOG" 2>&1; then ok "$_d"; else bad "$_d"; fi; }
# tfail DESC CMD...: passes when CMD exits non-zero.
tfail() { _d=$1; shift; if "$@" >"$LOG" 2>&1; then bad "$_d"; else ok "$_d"; fi; }
summary() {
	rm -f "$LOG"
	echo "$PASS passed, $FAIL failed"
	[ "$FAIL" -eq 0 ]
}

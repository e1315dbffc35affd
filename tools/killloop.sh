#!/bin/sh
# killloop.sh — kill -9 the relay at random moments under a steady load, many times, and check
# that every message that got 250 reached the (built-in, live) sink smarthost at least once.
#
#   tools/killloop.sh [ROUNDS] [--release]
#
# Runs tests/killloop.rs (kill_loop_long: 4 clients, then 1) with the debug binary, or the release binary with
# --release. Prints: rounds, acknowledged, delivered, duplicates, lost (must be 0).
set -eu
cd "$(dirname "$0")/.."
rounds=30
profile=
for a in "$@"; do
	case $a in
	--release) profile=--release ;;
	[0-9]*) rounds=$a ;;
	*) echo "usage: $0 [ROUNDS] [--release]" >&2; exit 2 ;;
	esac
done
KILLLOOP_ROUNDS=$rounds exec cargo test $profile --locked --test killloop -- \
	--ignored --exact kill_loop_long --nocapture

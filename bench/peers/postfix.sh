#!/bin/sh
# bench/peers/postfix.sh — runs `make bench`'s accept, relay and wan loads
# against Postfix from the distribution, side by side with picorelay, in one run.
#
# Installs Postfix (Debian/Ubuntu, apt-get) when missing, then runs it as a
# separate instance with its own config directory and queue, so that a Postfix
# already used as the machine's MTA is not touched:
#   - listening on 127.0.0.1:$POSTFIX_PORT only (inet_interfaces = loopback-only),
#   - relaying for 127.0.0.0/8 to [127.0.0.1]:$PROXY_PORT: the bench's
#     latency-injecting proxy in front of its sink (127.0.0.1:$SINK_PORT), the
#     same hop picorelay's relay cases go through (no delay but in the wan cases),
#   - no local delivery, no DNS, no TLS,
#   - messages carrying "X-Bench-Hold: yes" (the accept cases, and the wan
#     backlog) are put on hold by header_checks, so accept numbers measure
#     accepting only, like picorelay's hold mode; in_flow_delay = 0 so Postfix
#     is not throttled waiting for deliveries that never come.
# The bench also gets:
#   --peer-spool $PF_QUEUE: the block device whose writes are counted per message,
#   --peer-pids: master and its children, for idle memory and CPU (utime + stime
#     + cutime + cstime: master reaps the short-lived children),
#   --peer-release: the wan backlog is released from hold (postsuper -H moves it to
#     the deferred queue, postqueue -f has the queue manager scan that at once),
#   --peer-concurrency: smtp_destination_concurrency_limit, the limit of the smtp
#     transport's connections to one destination, here the relayhost (recipients
#     go to default_transport = smtp: relay_domains is empty); default 20, which
#     the bench sets again after the wan cases (and main.cf is rewritten on every
#     start of this script).
# Postfix is stopped on exit. Nothing but loopback is ever a target.
#
# Usage (as root, from anywhere): bench/peers/postfix.sh [bench options, e.g. --quick --runs 3]
# Environment: POSTFIX_PORT (2626), SINK_PORT (2627), PROXY_PORT (2628),
#              PF_CONF (/etc/postfix-bench), PF_QUEUE (/var/spool/postfix-bench).
set -eu

POSTFIX_PORT=${POSTFIX_PORT:-2626}
SINK_PORT=${SINK_PORT:-2627}
PROXY_PORT=${PROXY_PORT:-2628}
PF_CONF=${PF_CONF:-/etc/postfix-bench}
PF_QUEUE=${PF_QUEUE:-/var/spool/postfix-bench}
PF_DATA=${PF_DATA:-/var/lib/postfix-bench}
PF_LOG=${PF_LOG:-/var/log/postfix-bench.log}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

die() { echo "postfix.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs a package and starts Postfix)"
for p in "$POSTFIX_PORT" "$SINK_PORT" "$PROXY_PORT"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
        die "port $p is in use; set POSTFIX_PORT / SINK_PORT / PROXY_PORT"
    fi
done

if ! command -v postfix >/dev/null 2>&1 && [ ! -x /usr/sbin/postfix ]; then
    echo "postfix.sh: installing postfix from the distribution" >&2
    printf '%s\n' \
        "postfix postfix/main_mailer_type select No configuration" \
        "postfix postfix/mailname string bench.localdomain" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix >&2
fi
PATH=/usr/sbin:/sbin:$PATH
VERSION=$(postconf -d -h mail_version 2>/dev/null || echo unknown)

# The instance's config: master.cf from the distribution, with the public
# port 25 listener replaced by ours, and no chroot (keeps the instance
# self-contained; the bench uses only IP addresses).
mkdir -p "$PF_CONF" "$PF_DATA" "$PF_QUEUE"
chown postfix "$PF_DATA"
if [ -f /usr/share/postfix/master.cf.dist ]; then
    cp /usr/share/postfix/master.cf.dist "$PF_CONF/master.cf"
else
    cp /etc/postfix/master.cf "$PF_CONF/master.cf"
fi
sed -i -e 's/^smtp\([[:space:]]\+\)inet/#smtp\1inet/' "$PF_CONF/master.cf"
printf '127.0.0.1:%s inet n - n - - smtpd\n' "$POSTFIX_PORT" >> "$PF_CONF/master.cf"
printf '/^X-Bench-Hold: yes/ HOLD\n' > "$PF_CONF/bench_header_checks"
cat > "$PF_CONF/main.cf" <<CF
# Written by bench/peers/postfix.sh: a loopback-only relay to the bench sink.
compatibility_level = 3.6
queue_directory = $PF_QUEUE
data_directory = $PF_DATA
maillog_file = $PF_LOG
maillog_file_prefixes = /var, /dev/stdout, $(dirname "$PF_LOG")
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$PROXY_PORT
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
smtp_tls_security_level = none
header_checks = regexp:$PF_CONF/bench_header_checks
in_flow_delay = 0s
biff = no
CF
postconf -c "$PF_CONF" -F '*/*/chroot = n'

stop_postfix() {
    postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    postsuper -c "$PF_CONF" -d ALL >/dev/null 2>&1 || true
}
trap stop_postfix EXIT INT TERM

# Creates the queue's subdirectories with Postfix's ownerships.
postfix -c "$PF_CONF" post-install create-missing >&2 ||
    die "postfix post-install failed (see $PF_LOG)"
postfix -c "$PF_CONF" start >&2 || die "postfix did not start (see $PF_LOG)"
i=0
until ss -Hltn "sport = :$POSTFIX_PORT" | grep -q . || [ $i -ge 100 ]; do
    sleep 0.1; i=$((i + 1))
done
ss -Hltn "sport = :$POSTFIX_PORT" | grep -q . || die "postfix is not listening on 127.0.0.1:$POSTFIX_PORT (see $PF_LOG)"
echo "postfix.sh: Postfix $VERSION on 127.0.0.1:$POSTFIX_PORT, relayhost [127.0.0.1]:$PROXY_PORT (the bench's proxy to its sink on $SINK_PORT), queue $PF_QUEUE" >&2

cd "$REPO"
make release >&2
cargo bench --locked --bench bench -- \
    --peer "Postfix $VERSION" --target "127.0.0.1:$POSTFIX_PORT" \
    --sink-port "$SINK_PORT" --proxy-port "$PROXY_PORT" \
    --peer-reset "postsuper -c $PF_CONF -d ALL >/dev/null 2>&1" \
    --peer-pids "m=\$(cat $PF_QUEUE/pid/master.pid); echo \$m; pgrep -P \$m" \
    --peer-spool "$PF_QUEUE" \
    --peer-release "postsuper -c $PF_CONF -H ALL >/dev/null 2>&1 && postqueue -c $PF_CONF -f" \
    --peer-concurrency "postconf -c $PF_CONF -e smtp_destination_concurrency_limit={n} && postfix -c $PF_CONF reload >/dev/null 2>&1" \
    "$@"

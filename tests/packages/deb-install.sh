#!/bin/sh
# deb-install.sh DEB: the .deb installed for real into a debootstrapped minimal
# Debian 12 (bookworm) and used as its users would, three times:
#   A. on a system without an MTA: dpkg -i, files and modes, the user and the
#      spool, `sendmail` as cron calls it, `mail`, `picorelay check`, a
#      reinstall, bsd-mailx taking /usr/bin/mail over and giving it back,
#      dpkg -r (config and spool stay), dpkg -P (they go);
#   B. replacing nullmailer, C. replacing exim4-daemon-light, with
#      `apt-get install ./picorelay.deb` (what users run).
# Needs root, debootstrap and the Debian mirror (DEBIAN_MIRROR). The
# debootstrap tarball and the .debs apt fetched are cached in
# target/debootstrap-cache/ (PKGTEST_CACHE), so a rerun only unpacks.
# Prints one line per check and "N passed, N failed"; exits 1 on any failure.
set -u
cd "$(dirname "$0")/../.."
. tests/packages/lib.sh

DEB=${1:?usage: deb-install.sh picorelay_VERSION_ARCH.deb}
DEB=$(realpath "$DEB")
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ARCH=$(dpkg --print-architecture)
CACHE=$(realpath -m "${PKGTEST_CACHE:-target/debootstrap-cache}")
ROOT=$(realpath -m "${PKGTEST_ROOT:-target/packages-test/$SUITE}")
TARBALL=$CACHE/$SUITE-minbase-$ARCH.tgz
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "deb-install.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "deb-install.sh: apt-get install debootstrap" >&2; exit 2; }

# Every mount below $ROOT, deepest first.
umount_all() {
	awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts |
		sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
save_debs() {
	mkdir -p "$CACHE/apt-archives"
	for f in "$ROOT"/var/cache/apt/archives/*.deb; do
		[ -f "$f" ] && { [ -e "$CACHE/apt-archives/${f##*/}" ] || cp -l "$f" "$CACHE/apt-archives/" 2>/dev/null || cp "$f" "$CACHE/apt-archives/"; }
	done
	return 0
}
cleanup() { save_debs; umount_all; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the root: tarball (cached), unpacked fresh every run ------------------
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
	echo "# debootstrap: downloading $SUITE (minbase) from $MIRROR into $TARBALL"
	rm -rf "$CACHE/make-tarball"
	if ! debootstrap --variant=minbase --make-tarball="$TARBALL.part" "$SUITE" "$CACHE/make-tarball" "$MIRROR" >"$LOG" 2>&1; then
		bad "debootstrap --make-tarball from $MIRROR"; summary; exit 1
	fi
	mv "$TARBALL.part" "$TARBALL"; rm -rf "$CACHE/make-tarball"
fi
umount_all
rm -rf --one-file-system "$ROOT"
mkdir -p "$ROOT"
# The second stage (dpkg configuring ~90 packages) takes half a minute: its
# result is kept too, as a tar of the finished root, rebuilt with the tarball.
ROOTTAR=$CACHE/$SUITE-minbase-$ARCH.root.tar
ZSTD=; command -v zstd >/dev/null && ZSTD=--zstd
if [ -s "$ROOTTAR" ] && [ "$ROOTTAR" -nt "$TARBALL" ] &&
	tar -C "$ROOT" $ZSTD --numeric-owner -xpf "$ROOTTAR" >"$LOG" 2>&1; then
	ok "$SUITE root unpacked from the cache ($(($(date +%s) - T0)) s)"
elif debootstrap --variant=minbase --unpack-tarball="$TARBALL" "$SUITE" "$ROOT" "$MIRROR" >"$LOG" 2>&1; then
	ok "debootstrap $SUITE minbase into $ROOT ($(($(date +%s) - T0)) s)"
	tar -C "$ROOT" $ZSTD --numeric-owner -cpf "$ROOTTAR.part" . && mv "$ROOTTAR.part" "$ROOTTAR"
else
	bad "debootstrap --unpack-tarball"; summary; exit 1
fi
mount -t proc proc "$ROOT/proc"
# No daemon may start inside the chroot (exim4, nullmailer): invoke-rc.d and
# deb-systemd-invoke ask policy-rc.d first.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
[ -d "$CACHE/apt-archives" ] && cp -l "$CACHE"/apt-archives/*.deb "$ROOT/var/cache/apt/archives/" 2>/dev/null
cp "$DEB" "$ROOT/tmp/picorelay.deb"

# c 'COMMANDS': runs in the chroot, as root, with a clean environment.
c() {
	chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive TERM=dumb /bin/sh -c "$1"
}
APT='apt-get -y -q -o Dpkg::Use-Pty=0 -o APT::Sandbox::User=root --no-install-recommends'
t "apt-get update (mirror $MIRROR)" c "$APT update"

# --- checks shared by the three scenarios -----------------------------------
installed_checks() {
	s=$1
	t "$s: picorelay is installed" c '[ "$(dpkg-query -W -f="\${db:Status-Abbrev}" picorelay)" = "ii " ]'
	t "$s: /usr/sbin/picorelay 0755 root:root" c '[ "$(stat -c "%a %U:%G" /usr/sbin/picorelay)" = "755 root:root" ]'
	t "$s: /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq are picorelay" c '
		for l in /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq; do
			[ "$(readlink -f $l)" = /usr/sbin/picorelay ] || { ls -l $l; exit 1; }; done'
	t "$s: /usr/bin/mail and mailx are picorelay (mailx alternative)" c '
		[ "$(readlink -f /usr/bin/mail)" = /usr/sbin/picorelay ] && [ "$(readlink -f /usr/bin/mailx)" = /usr/sbin/picorelay ]'
	t "$s: system user and group picorelay (no login shell, home = spool)" c '
		getent group picorelay && e=$(getent passwd picorelay) && echo "$e" &&
		uid=$(echo "$e" | cut -d: -f3) && [ "$uid" -lt 1000 ] &&
		[ "$(echo "$e" | cut -d: -f6)" = /var/spool/picorelay ] &&
		case "$(echo "$e" | cut -d: -f7)" in */nologin|*/false) ;; *) exit 1;; esac'
	t "$s: /etc/picorelay 0750 root:picorelay" c '[ "$(stat -c "%a %U:%G" /etc/picorelay)" = "750 root:picorelay" ]'
	t "$s: picorelay.ini 0640 root:picorelay, a conffile" c '
		[ "$(stat -c "%a %U:%G" /etc/picorelay/picorelay.ini)" = "640 root:picorelay" ] &&
		dpkg-query -W -f="\${Conffiles}\n" picorelay | grep -q "^ /etc/picorelay/picorelay.ini [0-9a-f]\{32\}$"'
	t "$s: spool /var/spool/picorelay and its tmp, queue, corrupt 0750 picorelay:picorelay" c '
		for d in /var/spool/picorelay /var/spool/picorelay/tmp /var/spool/picorelay/queue /var/spool/picorelay/corrupt; do
			[ "$(stat -c "%a %U:%G" $d)" = "750 picorelay:picorelay" ] || { ls -ld $d; exit 1; }; done'
	t "$s: unit, sysusers, tmpfiles installed; ExecStart=/usr/sbin/picorelay" c '
		grep -qx "ExecStart=/usr/sbin/picorelay -c /etc/picorelay/picorelay.ini serve" /lib/systemd/system/picorelay.service &&
		[ -f /usr/lib/sysusers.d/picorelay.conf ] && [ -f /usr/lib/tmpfiles.d/picorelay.conf ]'
	t "$s: unit enabled (multi-user.target.wants), though systemd does not run here" c '
		[ "$(readlink /etc/systemd/system/multi-user.target.wants/picorelay.service)" = /lib/systemd/system/picorelay.service ]'
	t "$s: docs: copyright, changelog.gz, man page" c '
		[ -f /usr/share/doc/picorelay/copyright ] && zcat /usr/share/doc/picorelay/changelog.gz | head -1 | grep -q "^picorelay (" &&
		[ -f /usr/share/man/man8/picorelay.8.gz ]'
	t "$s: no relay runs in the chroot (status exits 3)" c 'picorelay status; [ $? = 3 ]'
	t "$s: picorelay check on the installed config: exit 0 (hold mode)" c 'picorelay check 2>&1 | tee /dev/stderr | grep -q "hold mode"; picorelay check'
	queued() { c 'find /var/spool/picorelay/queue -type f 2>/dev/null | wc -l'; }
	n0=$(queued)
	# cron (Debian's cron 3.0pl1): MAILCMD -FCronDaemon -i -B8BITMIME -oem RCPT, headers from cron.
	t "$s: sendmail as cron calls it queues the message" c '
		printf "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@box> run-parts /etc/cron.daily\nContent-Type: text/plain; charset=UTF-8\n\nlogrotate: error: nothing\n" |
		/usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root'
	t "$s: echo … | sendmail -t queues the message" c '
		printf "To: admin@example.com\nSubject: smartd: /dev/sda failing\n\nbody\n" | sendmail -t'
	t "$s: echo … | mail -s queues the message" c 'echo "pool tank DEGRADED" | mail -s "ZFS: tank" root'
	t "$s: 3 more files in the queue, each listed by picorelay queue list (hold mode)" c "
		picorelay queue list; [ \$(find /var/spool/picorelay/queue -type f | wc -l) -eq $((n0 + 3)) ] &&
		for f in /var/spool/picorelay/queue/*; do picorelay queue list | grep -q \"^\${f##*/} \" || exit 1; done"
	t "$s: mailq lists the same queue" c '[ "$(mailq | grep -c .)" = "$(picorelay queue list | grep -c .)" ]'
	t "$s: queued files belong to picorelay (the service can read them)" c '
		! find /var/spool/picorelay -type f ! -user picorelay | grep .'
}

purge_checks() {
	s=$1
	t "$s: dpkg -r picorelay" c 'dpkg -r picorelay'
	t "$s: after remove: binary, sendmail, mailq and mail links gone" c '
		for f in /usr/sbin/picorelay /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/mail /usr/bin/mailx; do
			[ -e $f ] && { echo "$f still there"; exit 1; }; done; ! update-alternatives --query mailx 2>/dev/null | grep -q picorelay'
	t "$s: after remove: config and queued mail kept" c '
		[ -f /etc/picorelay/picorelay.ini ] && [ $(find /var/spool/picorelay -type f -path "*queue*" | wc -l) -ge 3 ]'
	t "$s: dpkg -P picorelay" c 'dpkg -P picorelay'
	t "$s: after purge: /etc/picorelay, the spool and the unit links are gone" c '
		! [ -e /etc/picorelay ] && ! [ -e /var/spool/picorelay ] &&
		! find /etc/systemd /var/lib/systemd -name "*picorelay*" 2>/dev/null | grep . &&
		[ -z "$(dpkg-query -W -f="\${db:Status-Abbrev}" picorelay 2>/dev/null | tr -d " ")" ] || [ "$(dpkg-query -W -f="\${db:Status-Abbrev}" picorelay 2>/dev/null)" = "pn " ]'
}

# --- A: no MTA before -------------------------------------------------------
S=A
t "A: no MTA installed before (minbase)" c '! dpkg-query -W -f="\${Status}\n" $(dpkg-query -W -f="\${Package}\n") | grep -q x; ! [ -e /usr/sbin/sendmail ]'
t "A: dpkg -i picorelay.deb (no dependencies to satisfy)" c 'dpkg -i /tmp/picorelay.deb'
installed_checks A
t "A: reinstall (postinst configure with the old version): exit 0, queue and modes kept" c '
	n=$(picorelay queue list | grep -c .); dpkg -i /tmp/picorelay.deb &&
	[ "$(picorelay queue list | grep -c .)" = "$n" ] && [ "$(stat -c "%a %G" /etc/picorelay/picorelay.ini)" = "640 picorelay" ]'
t "A: a modified config survives a reinstall (conffile)" c '
	echo "; local edit" >> /etc/picorelay/picorelay.ini && dpkg -i --force-confold /tmp/picorelay.deb &&
	tail -1 /etc/picorelay/picorelay.ini | grep -q "local edit" && picorelay check'
t "A: apt-get install bsd-mailx (picorelay satisfies its mail-transport-agent)" c "$APT install bsd-mailx"
t "A: bsd-mailx takes /usr/bin/mail over; picorelay stays installed" c '
	[ "$(readlink -f /usr/bin/mail)" = /usr/bin/bsd-mailx ] && dpkg-query -W -f="\${Status}" picorelay | grep -q "ok installed"'
t "A: apt-get purge bsd-mailx gives /usr/bin/mail back to picorelay" c "$APT purge bsd-mailx && [ \"\$(readlink -f /usr/bin/mail)\" = /usr/sbin/picorelay ]"
purge_checks A

# --- B: replacing nullmailer ------------------------------------------------
t "B: apt-get install nullmailer" c "$APT install nullmailer && [ \"\$(readlink -f /usr/sbin/sendmail)\" != /usr/sbin/picorelay ]"
t "B: dpkg -i alone refuses while nullmailer is installed (Conflicts)" c '! dpkg -i /tmp/picorelay.deb && dpkg-query -W -f="\${Status}" nullmailer | grep -q "ok installed"'
c 'dpkg -r picorelay >/dev/null 2>&1; dpkg -P picorelay >/dev/null 2>&1; true'
t "B: apt-get install ./picorelay.deb replaces nullmailer" c "$APT install /tmp/picorelay.deb"
t "B: nullmailer removed" c '! dpkg-query -W -f="\${Status}" nullmailer 2>/dev/null | grep -q "ok installed"'
installed_checks B
purge_checks B

# --- C: replacing exim4 -----------------------------------------------------
t "C: apt-get install exim4-daemon-light" c "$APT install exim4-daemon-light && [ \"\$(readlink -f /usr/sbin/sendmail)\" != /usr/sbin/picorelay ]"
t "C: apt-get install ./picorelay.deb replaces exim4-daemon-light" c "$APT install /tmp/picorelay.deb"
t "C: exim4-daemon-light removed" c '! dpkg-query -W -f="\${Status}" exim4-daemon-light 2>/dev/null | grep -q "ok installed"'
installed_checks C
t "C: apt-get check: dependencies consistent" c 'apt-get check'
purge_checks C

echo "# deb-install.sh: $(($(date +%s) - T0)) s"
summary

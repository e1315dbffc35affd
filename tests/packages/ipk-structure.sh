#!/bin/sh
# ipk-structure.sh IPK...: what can be checked of an OpenWrt package without a
# router: the outer archive as opkg reads it (a gzipped GNU tar of
# debian-binary, data.tar.gz, control.tar.gz; no pax headers, which opkg's tar
# reader does not know), the control fields, conffiles, file modes and owners,
# the binary's CPU, the shipped config (`picorelay check`), `sh -n` on the init
# and maintainer scripts, and postinst-pkg run against a scratch root.
# Prints one line per check and "N passed, N failed"; exits 1 on any failure.
set -u
cd "$(dirname "$0")/../.."
. tests/packages/lib.sh
[ $# -gt 0 ] || { echo "usage: ipk-structure.sh picorelay_VERSION-R_ARCH.ipk..." >&2; exit 2; }
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
HOSTBIN=${HOSTBIN:-target/$(uname -m)-unknown-linux-musl/release/picorelay}

for ipk in "$@"; do
	n=${ipk##*/}
	arch=${n#picorelay_*_}; arch=${arch%.ipk}
	W=$(mktemp -d)
	t "$n: outer archive is gzip (opkg-lede reads no ar)" sh -c "[ \"\$(od -An -tx1 -N2 '$ipk' | tr -d ' ')\" = 1f8b ]"
	t "$n: members ./debian-binary ./data.tar.gz ./control.tar.gz, in that order" sh -c "
		[ \"\$(tar -tzf '$ipk' | tr '\n' ' ')\" = './debian-binary ./data.tar.gz ./control.tar.gz ' ]"
	tar -C "$W" -xzf "$ipk"
	mkdir -p "$W/data" "$W/control"
	tar -C "$W/data" -xzf "$W/data.tar.gz"
	tar -C "$W/control" -xzf "$W/control.tar.gz"
	t "$n: debian-binary is 2.0" sh -c "[ \"\$(cat '$W/debian-binary')\" = 2.0 ]"
	# GNU tar headers carry the magic \"ustar  \" at offset 257; a pax archive has
	# \"ustar\" NUL and typeflag x/g entries.
	for a in "$ipk" "$W/data.tar.gz" "$W/control.tar.gz"; do
		t "$n: ${a##*/}: GNU tar headers, no pax entries" sh -c "
			[ \"\$(gzip -dc '$a' | od -An -c -j257 -N8 | tr -d ' ')\" = 'ustar\0' ] &&
			! gzip -dc '$a' | tar -tvf - | grep -q PaxHeader"
	done
	field() { sed -n "s/^$1: //p" "$W/control/control"; }
	t "$n: Package: picorelay" [ "$(field Package)" = picorelay ]
	t "$n: Version: $VERSION-<release>" sh -c "echo '$(field Version)' | grep -qx '$VERSION-[0-9][0-9]*'"
	t "$n: Architecture: $arch (from the file name)" [ "$(field Architecture)" = "$arch" ]
	t "$n: Depends: libc (the binary is static; libc is in every image)" [ "$(field Depends)" = libc ]
	t "$n: Installed-Size is the unpacked data size" [ "$(field Installed-Size)" = "$(gzip -dc "$W/data.tar.gz" | wc -c)" ]
	t "$n: Description, Maintainer, License, Section present" sh -c "
		for f in Description Maintainer License Section; do grep -q \"^\$f: .\" '$W/control/control' || exit 1; done"
	t "$n: Require-User: picorelay=465:picorelay=465" [ "$(field Require-User)" = picorelay=465:picorelay=465 ]
	t "$n: Alternatives: sendmail, /usr/lib/sendmail, mailq, mail -> /usr/sbin/picorelay" sh -c "
		a='$(field Alternatives)'; echo \"\$a\" | tr ',' '\n' | sed 's/^ //' > '$W/alts'
		grep -qx '[0-9]*:/usr/sbin/sendmail:/usr/sbin/picorelay' '$W/alts' &&
		grep -qx '[0-9]*:/usr/lib/sendmail:/usr/sbin/picorelay' '$W/alts' &&
		grep -qx '[0-9]*:/usr/bin/mailq:/usr/sbin/picorelay' '$W/alts' &&
		grep -qx '[0-9]*:/usr/bin/mail:/usr/sbin/picorelay' '$W/alts' && ! grep -vqx '[0-9][0-9]*:/[^:]*:/[^:]*' '$W/alts'"
	t "$n: conffiles lists /etc/picorelay/picorelay.ini, which is in the data" sh -c "
		[ \"\$(cat '$W/control/conffiles')\" = /etc/picorelay/picorelay.ini ] && [ -f '$W/data/etc/picorelay/picorelay.ini' ]"
	t "$n: control scripts postinst, postinst-pkg, prerm are executable" sh -c "
		cd '$W/control' && [ -x postinst ] && [ -x postinst-pkg ] && [ -x prerm ]"
	t "$n: every file owned by 0:0" sh -c "! gzip -dc '$W/data.tar.gz' | tar -tvf - | awk '{ print \$2 }' | grep -v '^0/0$'"
	t "$n: /usr/sbin/picorelay 0755, /etc/init.d/picorelay 0755, config 0640" sh -c "
		gzip -dc '$W/data.tar.gz' | tar -tvf - > '$W/list'
		grep -q '^-rwxr-xr-x .* ./usr/sbin/picorelay$' '$W/list' && grep -q '^-rwxr-xr-x .* ./etc/init.d/picorelay$' '$W/list' &&
		grep -q '^-rw-r----- .* ./etc/picorelay/picorelay.ini$' '$W/list'"
	case $arch in aarch64_*) cpu=arm64;; arm_*) cpu=armhf;; x86_64) cpu=amd64;; riscv64*) cpu=riscv64;; *) cpu=unknown;; esac
	t "$n: the binary is a static ELF for $cpu" sh -c "
		[ \"\$(packaging/elf-machine.sh '$W/data/usr/sbin/picorelay')\" = $cpu ] &&
		! LC_ALL=C grep -q -a '/lib/ld-' '$W/data/usr/sbin/picorelay'"
	t "$n: init script: rc.common, USE_PROCD=1, start_service" sh -c "
		f='$W/data/etc/init.d/picorelay'; [ \"\$(head -1 \$f)\" = '#!/bin/sh /etc/rc.common' ] &&
		grep -qx 'USE_PROCD=1' \$f && grep -q '^start_service()' \$f"
	for s in data/etc/init.d/picorelay control/postinst control/postinst-pkg control/prerm; do
		t "$n: sh -n ${s##*/}" sh -n "$W/$s"
		if command -v busybox >/dev/null; then t "$n: busybox ash -n ${s##*/}" busybox ash -n "$W/$s"; fi
	done
	t "$n: the config sets the OpenWrt defaults (spool on flash, user, IPv4 loopback)" sh -c "
		c='$W/data/etc/picorelay/picorelay.ini'
		grep -qx 'dir = /etc/picorelay/spool' \$c && grep -qx 'user = picorelay' \$c && grep -qx 'listen = 127.0.0.1:25' \$c"
	if [ -x "$HOSTBIN" ]; then
		# The build host has its own spool folder and no picorelay account (the router's
		# postinst makes one; check looks the account up, as serve does at start).
		sed -e "s|^dir = /etc/picorelay/spool$|dir = $W/spool|" -e "s|^user = picorelay$|user = nobody|" \
			"$W/data/etc/picorelay/picorelay.ini" > "$W/check.ini"
		t "$n: picorelay check accepts the shipped config (hold mode)" "$HOSTBIN" -c "$W/check.ini" check
	fi
	# postinst-pkg against a scratch root that has the picorelay account.
	FR=$W/root; mkdir -p "$FR/etc/picorelay"
	echo 'picorelay:x:465:465:picorelay:/var/run/picorelay:/bin/false' > "$FR/etc/passwd"
	echo 'picorelay:x:465:' > "$FR/etc/group"
	cp "$W/data/etc/picorelay/picorelay.ini" "$FR/etc/picorelay/"
	t "$n: postinst-pkg creates the spool on flash, owned by picorelay (465)" sh -c "
		IPKG_INSTROOT='$FR' sh '$W/control/postinst-pkg' &&
		for d in spool spool/tmp spool/queue spool/corrupt; do
			[ \"\$(stat -c '%a %u:%g' '$FR/etc/picorelay/'\$d)\" = '750 465:465' ] || exit 1; done &&
		[ \"\$(stat -c '%a %u:%g' '$FR/etc/picorelay/picorelay.ini')\" = '640 0:465' ]"
	t "$n: postinst-pkg twice keeps a mode the admin chose (2770)" sh -c "
		chmod 2770 '$FR/etc/picorelay/spool' && IPKG_INSTROOT='$FR' sh '$W/control/postinst-pkg' &&
		[ \"\$(stat -c '%a' '$FR/etc/picorelay/spool')\" = 2770 ]"
	rm -rf "$W"
done
t "packaging/openwrt/Makefile: Package/picorelay/postinst is postinst-pkg (\$ doubled)" sh -c "
	sed -n '/^define Package\/picorelay\/postinst$/,/^endef$/p' packaging/openwrt/Makefile | sed '1d;\$d' | sed 's/[$][$]/$/g' |
		diff - packaging/openwrt/postinst-pkg"
t "packaging/openwrt/Makefile: the same Alternatives and Require-User as make ipk" sh -c "
	grep -q 'USERID:=picorelay=465:picorelay=465' packaging/openwrt/Makefile &&
	for a in 300:/usr/sbin/sendmail 300:/usr/lib/sendmail 300:/usr/bin/mailq 10:/usr/bin/mail; do
		grep -q \"\$a:/usr/sbin/picorelay\" packaging/openwrt/Makefile && grep -q \"\$a:/usr/sbin/picorelay\" packaging/openwrt/build-ipk.sh || exit 1; done"
summary

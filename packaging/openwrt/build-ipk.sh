#!/bin/sh
# build-ipk.sh: builds picorelay_VERSION-1_ARCH.ipk from a static binary, by
# hand, in the format OpenWrt's opkg reads (23.05, 24.10): a gzipped tar (GNU
# format) of ./debian-binary, ./data.tar.gz and ./control.tar.gz, as
# scripts/ipkg-build writes it. (Not an ar archive: opkg-lede's deb_extract
# only unpacks a gzipped tar.) Called by `make ipk`; environment: ARCH (an
# OpenWrt package architecture), BIN, VERSION, OUT, MAINTAINER. Run from the
# top of the tree.
set -eu

: "${ARCH:?}" "${BIN:?}" "${VERSION:?}" "${OUT:?}" "${MAINTAINER:?}"
RELEASE=${IPK_RELEASE:-1}
case "$ARCH" in
	aarch64_*) cpu=arm64 ;;
	arm_*) cpu=armhf ;;
	x86_64) cpu=amd64 ;;
	i386_*) cpu=i386 ;;
	riscv64_*) cpu=riscv64 ;;
	mips*) cpu=mips ;;
	*) echo "make ipk: ARCH must be an OpenWrt package architecture such as aarch64_cortex-a53, arm_cortex-a7_neon-vfpv4 or x86_64 (got '$ARCH')" >&2; exit 1 ;;
esac
[ -f "$BIN" ] || { echo "make ipk: no binary at $BIN (make cross TARGET=…, or BIN=path)" >&2; exit 1; }
machine=$(packaging/elf-machine.sh "$BIN") || true
[ "$machine" = "$cpu" ] || { echo "make ipk: $BIN is an ELF for $machine; $ARCH needs $cpu" >&2; exit 1; }
if LC_ALL=C grep -q -a '/lib/ld-\|/lib64/ld-' "$BIN"; then
	echo "make ipk: $BIN names a dynamic loader: package a static build" >&2; exit 1
fi

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
S=packaging/openwrt
STAGE=target/ipk/$ARCH
R=$STAGE/data
C=$STAGE/control
rm -rf "$STAGE"
mkdir -p "$R" "$C" "$OUT"
umask 022

install -D -m 0755 "$BIN" "$R/usr/sbin/picorelay"
install -D -m 0755 etc/openwrt/picorelay.init "$R/etc/init.d/picorelay"
install -d -m 0755 "$R/etc/picorelay"
sed -f "$S/picorelay.ini.sed" etc/picorelay.ini > "$R/etc/picorelay/picorelay.ini"
chmod 0640 "$R/etc/picorelay/picorelay.ini"
# Every OpenWrt default must have found its line in etc/picorelay.ini.
for want in 'listen = 127.0.0.1:25' 'user = picorelay' 'workers = 4' 'max_message_size = 1M' \
	'dir = /etc/picorelay/spool' 'max_size = 4M'; do
	grep -qx "$want" "$R/etc/picorelay/picorelay.ini" ||
		{ echo "make ipk: etc/picorelay.ini changed: '$want' not set by $S/picorelay.ini.sed" >&2; exit 1; }
done

echo /etc/picorelay/picorelay.ini > "$C/conffiles"
install -m 0755 "$S/postinst" "$S/postinst-pkg" "$S/prerm" "$C/"
TS=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')
TAR="tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime=@$SOURCE_DATE_EPOCH"
(cd "$R" && $TAR -cf - .) | gzip -9n > "$STAGE/data.tar.gz"
size=$(gzip -dc "$STAGE/data.tar.gz" | wc -c)
cat > "$C/control" <<CONTROL
Package: picorelay
Version: $VERSION-$RELEASE
Depends: libc
Source: picorelay
SourceName: picorelay
License: MIT
Section: mail
SourceDateEpoch: $SOURCE_DATE_EPOCH
Maintainer: $MAINTAINER
Architecture: $ARCH
Installed-Size: $size
Require-User: picorelay=465:picorelay=465
Alternatives: 300:/usr/sbin/sendmail:/usr/sbin/picorelay, 300:/usr/lib/sendmail:/usr/sbin/picorelay, 300:/usr/bin/mailq:/usr/sbin/picorelay, 10:/usr/bin/mail:/usr/sbin/picorelay
Description: Small SMTP relay to one smarthost, with a durable queue: one static
 binary, one ini file (/etc/picorelay/picorelay.ini), a spool on the flash
 overlay (/etc/picorelay/spool). Provides sendmail and mailq.
CONTROL
chmod 0644 "$C/control" "$C/conffiles"
(cd "$C" && $TAR -cf - .) | gzip -9n > "$STAGE/control.tar.gz"
echo 2.0 > "$STAGE/debian-binary"
ipk=$OUT/picorelay_${VERSION}-${RELEASE}_${ARCH}.ipk
(cd "$STAGE" && $TAR -cf - ./debian-binary ./data.tar.gz ./control.tar.gz) | gzip -9n > "$ipk"
echo "$ipk"

#!/bin/sh
# build-deb.sh: builds picorelay_VERSION_ARCH.deb from a static binary with
# dpkg-deb. Called by `make deb`; environment: ARCH, BIN, VERSION, OUT,
# MAINTAINER (all set by the Makefile). Run from the top of the tree.
set -eu

: "${ARCH:?}" "${BIN:?}" "${VERSION:?}" "${OUT:?}" "${MAINTAINER:?}"
case "$ARCH" in amd64|arm64|armhf|riscv64|i386) ;; *)
	echo "make deb: ARCH must be amd64, arm64, armhf, riscv64 or i386 (got '$ARCH')" >&2; exit 1 ;;
esac
[ -f "$BIN" ] || { echo "make deb: no binary at $BIN (make static, make cross TARGET=…, or BIN=path)" >&2; exit 1; }
machine=$(packaging/elf-machine.sh "$BIN") || true
if [ "$machine" != "$ARCH" ]; then
	echo "make deb: $BIN is an ELF for $machine, not $ARCH" >&2; exit 1
fi
if LC_ALL=C grep -q -a '/lib/ld-\|/lib64/ld-' "$BIN"; then
	echo "make deb: $BIN names a dynamic loader: package a static build" >&2; exit 1
fi

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
S=packaging/debian
STAGE=target/deb/$ARCH
R=$STAGE/root
rm -rf "$STAGE"
mkdir -p "$R/DEBIAN" "$OUT"
umask 022

install -D -m 0755 "$BIN" "$R/usr/sbin/picorelay"
install -d "$R/usr/bin" "$R/usr/lib"
ln -s picorelay "$R/usr/sbin/sendmail"
ln -s ../sbin/sendmail "$R/usr/lib/sendmail"
ln -s ../sbin/picorelay "$R/usr/bin/mailq"

install -d -m 0755 "$R/etc/picorelay"
install -m 0640 etc/picorelay.ini "$R/etc/picorelay/picorelay.ini"

install -d "$R/lib/systemd/system" "$R/usr/lib/sysusers.d" "$R/usr/lib/tmpfiles.d"
sed -e 's|/usr/local/sbin/picorelay|/usr/sbin/picorelay|g' systemd/picorelay.service \
	> "$R/lib/systemd/system/picorelay.service"
install -m 0644 systemd/picorelay.sysusers "$R/usr/lib/sysusers.d/picorelay.conf"
install -m 0644 systemd/picorelay.tmpfiles "$R/usr/lib/tmpfiles.d/picorelay.conf"
chmod 0644 "$R/lib/systemd/system/picorelay.service"

DOC=$R/usr/share/doc/picorelay
install -d "$DOC" "$R/usr/share/man/man8"
install -m 0644 "$S/copyright" "$DOC/copyright"
install -m 0644 "$S/README.Debian" "$DOC/README.Debian"
for f in README.md docs/guide.md docs/install.md; do
	[ -f "$f" ] && gzip -9n < "$f" > "$DOC/$(basename "$f").gz"
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
	echo "picorelay ($VERSION) unstable; urgency=medium"
	echo
	echo "  * Built by make deb from the static binary of commit $commit."
	echo "    Changes: see the git history of picorelay."
	echo
	echo " -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$DOC/changelog.gz"
sed -e "s|@VERSION@|$VERSION|" "$S/picorelay.8" | gzip -9n > "$R/usr/share/man/man8/picorelay.8.gz"
ln -s picorelay.8.gz "$R/usr/share/man/man8/sendmail.8.gz"
ln -s picorelay.8.gz "$R/usr/share/man/man8/mailq.8.gz"
# ELF e_type (offset 16): 2 = a static executable, 3 = a static PIE.
case $(od -An -tu1 -j16 -N1 "$BIN" | tr -d ' ') in 3) kind=static-pie ;; *) kind=static-exec ;; esac
install -d "$R/usr/share/lintian/overrides"
sed -e "s/^#?$kind //" -e '/^#?/d' "$S/lintian-overrides" > "$R/usr/share/lintian/overrides/picorelay"
chmod 0644 "$DOC"/* "$R/usr/share/man/man8/picorelay.8.gz"

# Control area.
size=$(du -k -s --apparent-size --exclude=DEBIAN "$R" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@MAINTAINER@|$MAINTAINER|" \
	-e "s|@INSTALLED_SIZE@|$size|" "$S/control.in" > "$R/DEBIAN/control"
install -m 0644 "$S/conffiles" "$R/DEBIAN/conffiles"
install -m 0755 "$S/postinst" "$S/prerm" "$S/postrm" "$R/DEBIAN/"
(cd "$R" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
	xargs md5sum) > "$R/DEBIAN/md5sums"
chmod 0644 "$R/DEBIAN/control" "$R/DEBIAN/md5sums"

# Same bytes for the same inputs: every mtime at the commit's time.
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb=$OUT/picorelay_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$R" "$deb" >/dev/null
echo "$deb"

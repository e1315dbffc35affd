#!/bin/sh
# dist.sh: release tarballs, picorelay-VERSION-TARGET.tar.gz, one for every
# static binary under target/*/release/ (make static, make cross TARGET=…),
# and SHA256SUMS over them (and over the .deb and .ipk files in
# target/packages/ of this version, when built). Called by `make dist`;
# environment: VERSION, OUT. A binary that is not static is skipped, with a note.
set -eu
: "${VERSION:?}" "${OUT:?}"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
rm -rf "$OUT"; mkdir -p "$OUT"
TAR="tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime=@$SOURCE_DATE_EPOCH"
n=0
for bin in target/*-linux-*/release/picorelay; do
	[ -f "$bin" ] || continue
	target=${bin#target/}; target=${target%%/*}
	if LC_ALL=C grep -q -a '/lib/ld-\|/lib64/ld-' "$bin"; then
		echo "dist: $bin is dynamically linked: skipped" >&2; continue
	fi
	name=picorelay-$VERSION-$target
	d=target/dist-stage/$name
	rm -rf "$d"; mkdir -p "$d/systemd" "$d/openwrt" "$d/docs"
	install -m 0755 "$bin" "$d/picorelay"
	install -m 0644 etc/picorelay.ini README.md "$d/"
	install -m 0644 systemd/picorelay.service systemd/picorelay.sysusers systemd/picorelay.tmpfiles "$d/systemd/"
	install -m 0755 etc/openwrt/picorelay.init "$d/openwrt/picorelay.init"
	install -m 0644 packaging/openwrt/picorelay.ini.sed "$d/openwrt/"
	sed -f packaging/openwrt/picorelay.ini.sed etc/picorelay.ini > "$d/openwrt/picorelay.ini"
	install -m 0644 docs/*.md "$d/docs/"
	(cd target/dist-stage && $TAR -cf - "$name") | gzip -9n > "$OUT/$name.tar.gz"
	echo "$OUT/$name.tar.gz"
	n=$((n + 1))
done
rm -rf target/dist-stage
[ "$n" -gt 0 ] || { echo "dist: no static binary under target/*/release/ (make static, make cross TARGET=…)" >&2; exit 1; }
for p in target/packages/picorelay_"$VERSION"_*.deb target/packages/picorelay_"$VERSION"-*_*.ipk; do
	[ -f "$p" ] && cp "$p" "$OUT/"
done
(cd "$OUT" && sha256sum -- *.tar.gz *.deb *.ipk 2>/dev/null > SHA256SUMS; cat SHA256SUMS)

#!/bin/sh
# run.sh: `make test-packages` after the packages are built: lintian on every
# .deb in target/packages/, the install test on the one this machine can run,
# the structure test on every .ipk. Ends with "N passed, N failed" over all of
# them and exits 1 on any failure.
set -u
cd "$(dirname "$0")/../.."
OUT=${PKG_OUT:-target/packages}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
HOSTARCH=$(dpkg --print-architecture)
T0=$(date +%s)
P=0; F=0
PART=$(mktemp "${TMPDIR:-/tmp}/picorelay-pkgpart.XXXXXX")
# part CMD...: runs one part, its output shown as it comes; its summary line
# ("N passed, N failed") is added to the total. A part that ends without one
# (it crashed) counts as a failure.
part() {
	"$@" 2>&1 | tee "$PART"
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$PART" | tail -1)
	if [ -n "$line" ]; then
		set -- $line; P=$((P + $1)); F=$((F + $3))
	else
		echo "FAIL (no summary line)"; F=$((F + 1))
	fi
}

lintian_part() {
	. tests/packages/lib.sh
	if ! command -v lintian >/dev/null; then
		bad "lintian is not installed (apt-get install lintian)"; summary; return
	fi
	for deb in "$OUT"/picorelay_"$VERSION"_*.deb; do
		[ -f "$deb" ] || continue
		# Any tag, info and pedantic included, fails; overrides carry reasons.
		# unused-override alone is let through: an override for a byte pattern
		# of one architecture's build (see packaging/debian/lintian-overrides).
		t "lintian --pedantic --display-info ${deb##*/}: no tags" sh -c "
			out=\$(lintian --pedantic --display-info '$deb' 2>&1 |
				grep -v -e 'running with root privileges' -e '^I: picorelay: unused-override ' -e '^N: .*overrid'); echo \"\$out\"; [ -z \"\$out\" ]"
	done
	summary
}
echo "## lintian"
part lintian_part

echo "## .deb install test ($HOSTARCH, debootstrap)"
part sh tests/packages/deb-install.sh "$OUT/picorelay_${VERSION}_${HOSTARCH}.deb"

echo "## .ipk structure"
set -- "$OUT"/picorelay_"$VERSION"-*_*.ipk
if [ -f "$1" ]; then
	part sh tests/packages/ipk-structure.sh "$@"
else
	echo "FAIL no .ipk in $OUT"; F=$((F + 1))
fi

echo "## test-packages: $(($(date +%s) - T0)) s"
rm -f "$PART"
echo "$P passed, $F failed"
[ "$F" -eq 0 ]

#!/bin/sh
# elf-machine.sh FILE: prints the ELF machine of FILE as a Debian-style CPU name
# (amd64, arm64, armhf, riscv64, i386, mips…), or "unknown"; exits 1 when FILE
# is no ELF file. Used to refuse packaging a binary under the wrong ARCH.
set -e
f=$1
[ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "not-elf"; exit 1; }
# e_machine: 2 bytes at offset 18, in the file's byte order (byte 5: 1 = LE).
order=$(od -An -tu1 -j5 -N1 "$f" | tr -d ' ')
set -- $(od -An -tu1 -j18 -N2 "$f")
if [ "$order" = 1 ]; then m=$(( $1 + 256 * $2 )); else m=$(( 256 * $1 + $2 )); fi
case $m in
	62) echo amd64 ;;
	183) echo arm64 ;;
	40) echo armhf ;;
	243) echo riscv64 ;;
	3) echo i386 ;;
	8) echo mips ;;
	*) echo "unknown($m)" ;;
esac

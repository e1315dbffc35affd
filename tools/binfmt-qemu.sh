#!/bin/sh
# binfmt-qemu.sh CPU: lets this kernel run CPU's ELF binaries (aarch64, arm,
# riscv64) directly, through qemu-CPU-static, so the black-box tests can spawn a
# foreign build like a native one (`make test-cross`). Idempotent; needs root.
#
# Debian's qemu-user-static ships the entry in /usr/lib/binfmt.d for
# systemd-binfmt, which does not run in a container or a CI job: mount
# binfmt_misc when it is missing and write the entry to `register` ourselves.
# Its F flag makes the kernel open the interpreter now, so the entry also works
# in chroots and other mount namespaces.
set -eu
cpu=${1:?usage: binfmt-qemu.sh CPU (aarch64, arm, riscv64)}
dir=/proc/sys/fs/binfmt_misc
conf=/usr/lib/binfmt.d/qemu-$cpu.conf

if [ ! -e "$dir/register" ]; then
	mount -t binfmt_misc binfmt_misc "$dir" || {
		echo "cannot mount binfmt_misc on $dir (not root, or a container without the privilege)" >&2
		exit 1
	}
fi
if [ -e "$dir/qemu-$cpu" ]; then
	grep -qx enabled "$dir/qemu-$cpu" || echo 1 > "$dir/qemu-$cpu"
	exit 0
fi
[ -f "$conf" ] || { echo "$conf is missing: apt-get install qemu-user-static" >&2; exit 1; }
grep -v '^[#;]' "$conf" | grep . | head -n 1 > "$dir/register"
echo "registered qemu-$cpu in $dir"

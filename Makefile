# picorelay — build, run, test, install.
PREFIX    ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR   ?=
CARGO     ?= cargo
RELEASE_BIN := target/release/picorelay
# What `make install` copies; BIN=path installs a binary built elsewhere (the
# install test passes its debug build) without a release build first.
BIN       ?= $(RELEASE_BIN)
RUN_DIR   := run

# systemd reads units, sysusers.d and tmpfiles.d from /usr/local/lib as well as
# /usr/lib, so these follow PREFIX (PREFIX=/usr for a distribution package).
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SBINDIR   := $(PREFIX)/sbin
BINDIR    := $(PREFIX)/bin

.PHONY: all build release static cross cross-deps cross-check-target test-cross run test size bench \
	install install-sendmail uninstall clean fuzz deb ipk dist test-packages

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

# Serves at once on 127.0.0.1:2525 in hold mode, with the spool under ./run/.
run: build
	@mkdir -p $(RUN_DIR)
	@test -f $(RUN_DIR)/picorelay.ini || sed -e 's|@SPOOL@|$(CURDIR)/$(RUN_DIR)/spool|' etc/dev.ini > $(RUN_DIR)/picorelay.ini
	./target/debug/picorelay -c $(RUN_DIR)/picorelay.ini serve

test:
	$(CARGO) test --locked -- --test-threads=4

# Static builds, one per CPU: one file with no library to match on the box,
# glibc or musl, for routers, NAS boxes and small boards. `make cross-deps
# TARGET=...` (Debian, root) installs what a target needs; `make cross
# TARGET=...` builds target/TARGET/release/picorelay and checks it is static;
# `make test-cross TARGET=...` runs the black-box suites against it under qemu.
#
#   aarch64-unknown-linux-musl     Raspberry Pi 3/4/5 (64-bit OS), ARM NAS, Wi-Fi 6 routers
#   armv7-unknown-linux-gnueabihf  32-bit ARM boards: glibc linked statically
#                                  (rustup has no armv7 musl standard library)
#   x86_64-unknown-linux-musl      x86 NAS and PCs (what `make static` builds here)
#   riscv64gc-unknown-linux-gnu    RISC-V boards: glibc linked statically
#
# ring's C and assembly parts are compiled with Debian's cross gcc, which also
# links. For the musl targets that is the gnu cross gcc: Rust's musl targets
# bring their own libc.a and crt objects, gcc only drives the link. A static
# glibc cannot load NSS modules, which is why users come from /etc/passwd
# (src/passwd.rs). The musl builds idle at about half the glibc build's resident
# memory (no shared libc and loader pages); musl's allocator costs a little
# accept rate.
TARGET ?= $(shell uname -m)-unknown-linux-musl
HOST_CPU := $(shell uname -m)

# Per target: Debian packages, the C compiler (and linker), rustc flags, and the
# qemu-user name of its CPU (empty when this machine runs it natively).
CROSS_PKGS_aarch64-unknown-linux-musl := gcc-aarch64-linux-gnu libc6-dev-arm64-cross
CROSS_CC_aarch64-unknown-linux-musl := aarch64-linux-gnu-gcc
CROSS_QEMU_aarch64-unknown-linux-musl := aarch64

CROSS_PKGS_x86_64-unknown-linux-musl := musl-tools
CROSS_CC_x86_64-unknown-linux-musl := musl-gcc
CROSS_LINKER_x86_64-unknown-linux-musl := cc
CROSS_AR_x86_64-unknown-linux-musl := ar
CROSS_QEMU_x86_64-unknown-linux-musl := x86_64

CROSS_PKGS_armv7-unknown-linux-gnueabihf := gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
CROSS_CC_armv7-unknown-linux-gnueabihf := arm-linux-gnueabihf-gcc
CROSS_RUSTFLAGS_armv7-unknown-linux-gnueabihf := -C target-feature=+crt-static
CROSS_QEMU_armv7-unknown-linux-gnueabihf := arm

CROSS_PKGS_riscv64gc-unknown-linux-gnu := gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
CROSS_CC_riscv64gc-unknown-linux-gnu := riscv64-linux-gnu-gcc
CROSS_RUSTFLAGS_riscv64gc-unknown-linux-gnu := -C target-feature=+crt-static
CROSS_QEMU_riscv64gc-unknown-linux-gnu := riscv64

CROSS_TARGETS := aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf \
	x86_64-unknown-linux-musl riscv64gc-unknown-linux-gnu
CROSS_CC := $(CROSS_CC_$(TARGET))
CROSS_LINKER := $(or $(CROSS_LINKER_$(TARGET)),$(CROSS_CC))
CROSS_AR := $(or $(CROSS_AR_$(TARGET)),$(patsubst %-gcc,%-ar,$(CROSS_CC)))
CROSS_QEMU := $(filter-out $(HOST_CPU),$(CROSS_QEMU_$(TARGET)))
CROSS_BIN := target/$(TARGET)/release/picorelay
T_LOWER := $(subst -,_,$(TARGET))
T_UPPER := $(shell echo '$(T_LOWER)' | tr a-z A-Z)
# Target-scoped, so build scripts (built for this machine) keep their flags. A
# RUSTFLAGS in the environment would replace CROSS_RUSTFLAGS: leave it unset.
CROSS_ENV := CC_$(T_LOWER)=$(CROSS_CC) AR_$(T_LOWER)=$(CROSS_AR) \
	CARGO_TARGET_$(T_UPPER)_LINKER=$(CROSS_LINKER) \
	CARGO_TARGET_$(T_UPPER)_RUSTFLAGS='$(CROSS_RUSTFLAGS_$(TARGET))'

cross-check-target:
	@test -n '$(CROSS_CC)' || { echo "TARGET=$(TARGET) is not one we build; one of: $(CROSS_TARGETS)" >&2; exit 1; }

# Idempotent: installs only what is missing, registers qemu only when the
# kernel does not know it yet (tools/binfmt-qemu.sh).
cross-deps: cross-check-target
	@rustup target list --installed 2>/dev/null | grep -qx '$(TARGET)' || rustup target add $(TARGET)
	@pkgs='$(CROSS_PKGS_$(TARGET)) file $(if $(CROSS_QEMU),qemu-user-static binfmt-support)'; \
	missing=$$(for p in $$pkgs; do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(if $(CROSS_QEMU),@sh tools/binfmt-qemu.sh $(CROSS_QEMU))

cross: cross-check-target
	@command -v $(CROSS_CC) >/dev/null || { echo "$(CROSS_CC) is missing: make cross-deps TARGET=$(TARGET)" >&2; exit 1; }
	@rustup target list --installed 2>/dev/null | grep -qx '$(TARGET)' || rustup target add $(TARGET)
	$(CROSS_ENV) $(CARGO) build --release --locked --target $(TARGET)
	@file -b $(CROSS_BIN) | grep -Eq 'statically linked|static-pie linked' || { echo "$(CROSS_BIN) is not statically linked: $$(file -b $(CROSS_BIN))" >&2; exit 1; }
	@ls -l $(CROSS_BIN) | awk '{ printf "$(CROSS_BIN): static, stripped: %d bytes (%.2f MiB)\n", $$5, $$5/1048576 }'

# The static build of this machine's CPU (bench measures its footprint).
static:
	$(MAKE) cross TARGET=$(HOST_CPU)-unknown-linux-musl

# The black-box suites in tests/ against the TARGET build: the harness (cargo's
# native test binaries) spawns PICORELAY_TEST_BIN, which the kernel hands to
# qemu-user through binfmt_misc. Every test holds under qemu, none is skipped:
# the privilege test reads the main thread's ids (qemu's own RCU thread keeps
# uid 0, the relay's threads all drop), and the RSS ceilings (64 MiB) hold with
# the emulator counted (about 16 MiB). Unit tests are the native `make test`'s.
test-cross: cross
	@./$(CROSS_BIN) --version >/dev/null 2>&1 || { echo "cannot run $(CROSS_BIN) here: make cross-deps TARGET=$(TARGET) registers qemu-$(CROSS_QEMU) with binfmt_misc" >&2; exit 1; }
	PICORELAY_TEST_BIN=$(CURDIR)/$(CROSS_BIN) $(CARGO) test --locked --test '*' -- --test-threads=4

size: release
	@ls -l $(RELEASE_BIN) | awk '{ printf "stripped release binary: %d bytes (%.2f MiB)\n", $$5, $$5/1048576 }'

# Loads the release binary on loopback with a built-in sink smarthost and
# writes BENCHMARKS.md: rates, latencies, memory, and per message the write
# I/Os and KB at the spool's block device and the CPU time; the wan cases
# drain a backlog through a proxy that adds 40 ms RTT (BENCH_ARGS='--only wan
# --no-write' for them alone). `make bench BENCH_ARGS=--quick` for a short run;
# bench/peers/postfix.sh runs the same loads against Postfix side by side.
# After `make static`, the static build's size and idle memory are added.
# BENCH_ARGS='--only pressure --no-write': the worker pool under attack alone
# (issue 12; binds 127.0.0.2 and 127.0.0.3, takes 5-10 minutes).
BENCH_ARGS ?=
bench: release
	$(CARGO) bench --locked --bench bench -- $(BENCH_ARGS)

# Runs every fuzz target (fuzz/README.md) for FUZZ_SECONDS each, one after the
# other; new inputs go to fuzz/work/TARGET, crashes to fuzz/artifacts/TARGET.
# Needs `cargo install cargo-fuzz`. `-s none`: no sanitizer, the one build that
# works on stable Rust (ASan needs nightly -Z flags; the fuzzed code has no unsafe).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= command address data session spool_header config reply json http_response
fuzz:
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p work/$$t && \
		$(CARGO) fuzz run -s none $$t work/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

# Installs the binary, the example config (never over an existing one), the
# systemd unit, sysusers and tmpfiles snippets. Afterwards, on a systemd host:
#   systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload
#   systemctl enable --now picorelay
install: $(if $(filter $(RELEASE_BIN),$(BIN)),release)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/picorelay \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/picorelay
	test -e $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini || \
		install -m 0640 etc/picorelay.ini $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini
	sed -e 's|/usr/local/sbin/picorelay|$(SBINDIR)/picorelay|g' \
		-e 's|/etc/picorelay\([/ ]\)|$(SYSCONFDIR)/picorelay\1|g' \
		systemd/picorelay.service > $(DESTDIR)$(UNITDIR)/picorelay.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/picorelay.service
	install -m 0644 systemd/picorelay.sysusers $(DESTDIR)$(SYSUSERSDIR)/picorelay.conf
	sed -e 's|/etc/picorelay\([/ ]\)|$(SYSCONFDIR)/picorelay\1|g' \
		systemd/picorelay.tmpfiles > $(DESTDIR)$(TMPFILESDIR)/picorelay.conf
	chmod 0644 $(DESTDIR)$(TMPFILESDIR)/picorelay.conf

# The sendmail, mailq and mail names, as links to picorelay. A sendmail or mail
# that is not already our link (another MTA's) is left alone, with an error.
LINKS := $(SBINDIR)/sendmail $(BINDIR)/mailq $(BINDIR)/mail
install-sendmail: install
	install -d $(DESTDIR)$(BINDIR)
	@for l in $(LINKS); do \
		if [ -e "$(DESTDIR)$$l" ] || [ -L "$(DESTDIR)$$l" ]; then \
			[ "$$(readlink "$(DESTDIR)$$l")" = "$(SBINDIR)/picorelay" ] && continue; \
			echo "$(DESTDIR)$$l exists and is not picorelay's: remove it (or the MTA that owns it) first" >&2; \
			exit 1; \
		fi; \
		echo "ln -s $(SBINDIR)/picorelay $(DESTDIR)$$l"; \
		ln -s $(SBINDIR)/picorelay "$(DESTDIR)$$l" || exit 1; \
	done

# Removes what install and install-sendmail put in place, but never the
# config or the spool (they hold the user's data); links only when they are ours.
uninstall:
	@for l in $(LINKS); do \
		[ "$$(readlink "$(DESTDIR)$$l")" = "$(SBINDIR)/picorelay" ] && rm -f "$(DESTDIR)$$l"; \
	done; true
	rm -f $(DESTDIR)$(SBINDIR)/picorelay \
		$(DESTDIR)$(UNITDIR)/picorelay.service $(DESTDIR)$(SYSUSERSDIR)/picorelay.conf \
		$(DESTDIR)$(TMPFILESDIR)/picorelay.conf

# --- Packages (packaging/, docs/install.md) --------------------------------
# Built from a static binary: `make static` here (x86_64 musl), `make cross
# TARGET=…` for the others, or BIN=path for one built elsewhere. The binary's
# ELF machine must match ARCH. Output in target/packages/.
VERSION   ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PKG_OUT   ?= target/packages
MAINTAINER ?= $(shell n=$$(git config user.name); e=$$(git config user.email); [ -n "$$n" ] && [ -n "$$e" ] && echo "$$n <$$e>" || echo 'picorelay maintainers <maintainers@picorelay.invalid>')
ARCH      ?= amd64
# The static binary for a Debian or OpenWrt architecture name.
static_bin = $(firstword $(wildcard $(foreach t,$(1),target/$(t)/release/picorelay)) target/$(firstword $(1))/release/picorelay)
bin_for = $(strip \
	$(if $(filter amd64 x86_64,$(1)),$(call static_bin,x86_64-unknown-linux-musl x86_64-unknown-linux-gnu),\
	$(if $(filter arm64 aarch64%,$(1)),$(call static_bin,aarch64-unknown-linux-musl aarch64-unknown-linux-gnu),\
	$(if $(filter armhf arm_%,$(1)),$(call static_bin,armv7-unknown-linux-musleabihf armv7-unknown-linux-gnueabihf),\
	$(if $(filter riscv64%,$(1)),$(call static_bin,riscv64gc-unknown-linux-musl riscv64gc-unknown-linux-gnu),\
	unknown-arch-$(1))))))

# make deb ARCH=amd64|arm64|armhf [BIN=…]: picorelay_VERSION_ARCH.deb (dpkg-deb).
deb:
	ARCH='$(ARCH)' BIN='$(or $(filter-out $(RELEASE_BIN),$(BIN)),$(call bin_for,$(ARCH)))' \
	VERSION='$(VERSION)' OUT='$(PKG_OUT)' MAINTAINER='$(MAINTAINER)' \
		sh packaging/debian/build-deb.sh

# make ipk ARCH=aarch64_cortex-a53|arm_cortex-a7_neon-vfpv4|x86_64|… [BIN=…]
# (default aarch64_cortex-a53): an OpenWrt package (opkg's format: a gzipped tar of debian-binary,
# control.tar.gz, data.tar.gz).
IPK_ARCH_DEFAULT := aarch64_cortex-a53
IPK_ARCH = $(if $(filter amd64,$(ARCH)),$(IPK_ARCH_DEFAULT),$(ARCH))
ipk:
	ARCH='$(IPK_ARCH)' BIN='$(or $(filter-out $(RELEASE_BIN),$(BIN)),$(call bin_for,$(IPK_ARCH)))' \
	VERSION='$(VERSION)' OUT='$(PKG_OUT)' MAINTAINER='$(MAINTAINER)' \
		sh packaging/openwrt/build-ipk.sh

# make dist: picorelay-VERSION-TARGET.tar.gz for every static binary under
# target/*/release/ (make static, make cross), and SHA256SUMS, in target/dist/.
dist:
	VERSION='$(VERSION)' OUT=target/dist sh packaging/dist.sh

# Black-box package tests: the .deb installed, used, removed and purged in a
# debootstrapped Debian 12 (alone, then replacing nullmailer and exim4), and
# the .ipk's structure. Needs root, debootstrap, lintian and the mirror
# (DEBIAN_MIRROR); the debootstrap tarball is cached in target/debootstrap-cache/.
test-packages:
	@test -f '$(call bin_for,amd64)' || $(MAKE) static
	$(MAKE) deb ARCH=amd64
	$(if $(wildcard $(call bin_for,arm64)),$(MAKE) deb ARCH=arm64)
	$(if $(wildcard $(call bin_for,armhf)),$(MAKE) deb ARCH=armhf)
	$(MAKE) ipk ARCH=x86_64
	$(if $(wildcard $(call bin_for,arm64)),$(MAKE) ipk ARCH=aarch64_cortex-a53)
	$(if $(wildcard $(call bin_for,armhf)),$(MAKE) ipk ARCH=arm_cortex-a7_neon-vfpv4)
	sh tests/packages/run.sh

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)

# picorelay — build, run, test, install.
PREFIX    ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR   ?=
CARGO     ?= cargo
BIN       := target/release/picorelay
RUN_DIR   := run

UNITDIR   ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
TMPFILESDIR ?= /usr/lib/tmpfiles.d
SBINDIR   := $(PREFIX)/sbin

.PHONY: all build release run test size install install-sendmail uninstall clean

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

size: release
	@ls -l $(BIN) | awk '{ printf "stripped release binary: %d bytes (%.2f MiB)\n", $$5, $$5/1048576 }'

# Installs the binary, the example config (never over an existing one), the
# systemd unit, sysusers and tmpfiles snippets.
install: release
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/picorelay \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/picorelay
	test -e $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini || \
		install -m 0640 etc/picorelay.ini $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini
	sed -e 's|/usr/local/sbin/picorelay|$(SBINDIR)/picorelay|g' \
		-e 's|/etc/picorelay/|$(SYSCONFDIR)/picorelay/|g' \
		systemd/picorelay.service > $(DESTDIR)$(UNITDIR)/picorelay.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/picorelay.service
	install -m 0644 systemd/picorelay.sysusers $(DESTDIR)$(SYSUSERSDIR)/picorelay.conf
	install -m 0644 systemd/picorelay.tmpfiles $(DESTDIR)$(TMPFILESDIR)/picorelay.conf

# The sendmail, mailq and mail names, as links to picorelay.
install-sendmail: install
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sf $(SBINDIR)/picorelay $(DESTDIR)$(SBINDIR)/sendmail
	ln -sf $(SBINDIR)/picorelay $(DESTDIR)$(PREFIX)/bin/mailq
	ln -sf $(SBINDIR)/picorelay $(DESTDIR)$(PREFIX)/bin/mail

# Removes what install and install-sendmail put in place, but never the
# config or the spool (they hold the user's data).
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/picorelay $(DESTDIR)$(SBINDIR)/sendmail \
		$(DESTDIR)$(PREFIX)/bin/mailq $(DESTDIR)$(PREFIX)/bin/mail \
		$(DESTDIR)$(UNITDIR)/picorelay.service $(DESTDIR)$(SYSUSERSDIR)/picorelay.conf \
		$(DESTDIR)$(TMPFILESDIR)/picorelay.conf

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)

# picorelay — build, run, test, install.
PREFIX    ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR   ?=
CARGO     ?= cargo
BIN       := target/release/picorelay
RUN_DIR   := run

.PHONY: all build release run test size install clean

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

install: release
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(SYSCONFDIR)/picorelay
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/picorelay
	test -e $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini || \
		install -m 0640 etc/picorelay.ini $(DESTDIR)$(SYSCONFDIR)/picorelay/picorelay.ini

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)

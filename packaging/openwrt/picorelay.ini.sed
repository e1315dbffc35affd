# OpenWrt defaults for etc/picorelay.ini (sed -f): the ipk's config and the SDK
# package's. Each line turns a commented default into a set value; build-ipk.sh
# checks that every one of them matched.
# IPv4 loopback only: [::1] fails to bind on routers with IPv6 disabled.
s|^;listen = 127.0.0.1:25, \[::1\]:25$|listen = 127.0.0.1:25|
# procd starts the relay as root: it drops to this user once port 25 is bound.
s|^;user =$|user = picorelay|
# Sized for a router: 4 sessions at once, 1 MiB messages.
s|^;workers = 16$|workers = 4|
s|^;max_message_size = 10M$|max_message_size = 1M|
# /var is RAM on OpenWrt: the spool goes on the flash overlay (docs/openwrt.md).
s|^;dir = /var/spool/picorelay$|dir = /etc/picorelay/spool|
# ... capped well below the free overlay space.
s|^;max_size = 100M$|max_size = 4M|

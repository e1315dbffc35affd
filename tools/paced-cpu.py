#!/usr/bin/env python3
"""paced-cpu.py BIN: the CPU a relay uses while 10,000 queued messages wait for the rate limit.

Starts an aiosmtpd sink on 127.0.0.1 and the relay BIN with `rate = 10/1h`, queues 10,000
messages over one SMTP session, then reads the relay's CPU time from /proc/PID/stat over
60 s: a runner that spins on a paced queue shows here. Needs python3 with aiosmtpd.
"""
import os, socket, subprocess, sys, time, threading, asyncio
from aiosmtpd.controller import Controller

class H:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        H.count += 1
        return "250 ok"

_s = socket.socket(); _s.bind(("127.0.0.1", 0)); sink_port = _s.getsockname()[1]; _s.close()
ctl = Controller(H(), hostname="127.0.0.1", port=sink_port)
ctl.start()
d = "/tmp/picorelay-paced-cpu"
subprocess.run(["rm", "-rf", d]); os.makedirs(d)
ini = f"""[server]
listen = 127.0.0.1:0
workers = 4
[smarthost]
host = 127.0.0.1:{sink_port}
tls = none
rate = 10/1h
[queue]
dir = {d}/spool
[log]
level = info
"""
open(f"{d}/p.ini", "w").write(ini)
relay = subprocess.Popen([sys.argv[1], "-c", f"{d}/p.ini", "serve"], stderr=subprocess.PIPE, text=True)
port = None
for line in relay.stderr:
    if "listening on" in line:
        port = int(line.rsplit(":", 1)[1]); break
threading.Thread(target=lambda: [None for _ in relay.stderr], daemon=True).start()
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rwb")
def rd():
    while True:
        l = f.readline()
        if l[3:4] != b"-": return l
rd(); f.write(b"EHLO x\r\n"); f.flush(); rd()
N = 10000
t0 = time.time()
for i in range(N):
    f.write(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"); f.flush()
    rd(); rd(); rd()
    f.write(b"Subject: alert %d\r\n\r\ndisk failing\r\n.\r\n" % i); f.flush()
    r = rd(); assert r.startswith(b"250"), r
print(f"queued {N} in {time.time()-t0:.1f}s; sink got {H.count}")
def cpu():
    st = open(f"/proc/{relay.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
time.sleep(5)
c0, w0 = cpu(), time.time()
time.sleep(60)
c1, w1 = cpu(), time.time()
print(f"relay CPU while paced: {c1-c0:.2f} s over {w1-w0:.0f} s = {100*(c1-c0)/(w1-w0):.2f}% of one core; sink got {H.count} (rate 10/1h)")
st = subprocess.run([sys.argv[1], "-c", f"{d}/p.ini", "status"], capture_output=True, text=True).stdout
print(st)
relay.terminate(); relay.wait(); ctl.stop()

#!/usr/bin/env python3
"""Opens a pty for the test systemd's /dev/console and copies what it prints
into a log. usage: ptylog.py LOG PTYNAME_FILE"""
import os, pty, select, sys, tty

log, name_file = sys.argv[1], sys.argv[2]
master, slave = pty.openpty()
tty.setraw(slave)  # our own slave fd keeps the master from seeing a hangup
with open(name_file + ".tmp", "w") as f:
    f.write(os.ttyname(slave) + "\n")
os.rename(name_file + ".tmp", name_file)
with open(log, "ab", buffering=0) as out:
    while True:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            out.write(data.replace(b"\r", b""))

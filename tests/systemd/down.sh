#!/bin/bash
# Stops the test systemd (gracefully, then by SIGKILL of its PID 1) and
# removes its cgroup. Only kills what up.sh recorded.
: "${H:?state dir}"
here=$(cd "$(dirname "$0")" && pwd)
[ -d "$H" ] || exit 0
alive() { [ -n "$1" ] && [ -r /proc/$1/status ] && ! grep -q '^State:.*Z' /proc/$1/status; }
up=$(cat "$H/unshare.pid" 2>/dev/null); p1=$(cat "$H/pid1" 2>/dev/null)
if alive "$p1"; then
  timeout 5 "$here/ctl.sh" systemctl --no-block exit >/dev/null 2>&1
  for _ in $(seq 250); do alive "$up" || break; sleep 0.02; done
fi
alive "$p1" && kill -KILL "$p1"
for _ in $(seq 250); do alive "$up" || break; sleep 0.02; done
alive "$up" && kill -KILL "$up"
pt=$(cat "$H/ptylog.pid" 2>/dev/null); alive "$pt" && kill -TERM "$pt"
cg=$(cat "$H/cgroup" 2>/dev/null)
if [ -n "$cg" ] && [ -d "$cg" ]; then
  for _ in $(seq 250); do find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; [ -d "$cg" ] || break; sleep 0.02; done
fi
exit 0

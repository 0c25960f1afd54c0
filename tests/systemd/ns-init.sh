#!/bin/bash
# PID 1 of the test namespaces: private /run, /dev and cgroup2, then systemd
# with only our units visible. Every mount here dies with the namespace.
set -eu
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/systemd/journald.conf.d /run/systemd/system.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToConsole=yes\nTTYPath=/dev/console\nMaxLevelConsole=debug\n' \
  > /run/systemd/journald.conf.d/test.conf
printf '[Manager]\nDefaultLimitCORE=0\n' > /run/systemd/system.conf.d/test.conf

d=/run/newdev; mkdir -p $d
mount -t tmpfs -o mode=0755,nosuid tmpfs $d
for n in null zero full random urandom tty kvm; do
  [ -e /dev/$n ] || continue
  touch $d/$n; mount --bind /dev/$n $d/$n
done
touch $d/console; mount --bind "$CONSOLE" $d/console
ln -s /dev/null $d/kmsg
mkdir -p $d/pts $d/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $d/pts
ln -s pts/ptmx $d/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $d/shm
ln -s /proc/self/fd $d/fd
mount --move $d /dev

umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup || true
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
# Units' StateDirectory= and friends must not land on the host.
mount -t tmpfs -o mode=0755 tmpfs /var/lib

for _ in $(seq 500); do [ -e "$H/go" ] && break; sleep 0.02; done
exec env -i container=intxd-test PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  SYSTEMD_UNIT_PATH="$UNITS:$BASE" \
  /lib/systemd/systemd --system --unit=intxd-test.target --show-status=false --log-target=journal \
  </dev/console >/dev/console 2>&1

#!/bin/bash
# tests/qemu/prepare.sh [CACHE_DIR]
#
# Prepares everything the QEMU/VFIO guest tests need, idempotently:
#   * host packages (Debian): qemu-system-x86, cpio, kmod (depmod), busybox-static
#     (installed with apt-get; `apt-get update` runs only when something is missing)
#   * a Debian *cloud* kernel (linux-image-<abi>-cloud-amd64), fetched with `apt-get download`
#     and unpacked with `dpkg-deb -x` into the cache (never installed on the host),
#     plus modules.dep generated with `depmod -b`
#   * $CACHE_DIR/env: a sourceable file with the paths the other scripts use
#     (KVER, KPKG, KPKG_VERSION, VMLINUZ, MODDIR, BUSYBOX, QEMU)
#
# Default CACHE_DIR: <repo>/target/qemu-cache.  A second run does no network I/O.
# Environment:
#   INTXD_QEMU_KERNEL_PKG  force a kernel package (e.g. linux-image-6.1.0-48-cloud-amd64);
#                          default: the cached one, else what linux-image-cloud-amd64 depends on,
#                          else the newest linux-image-*-cloud-amd64 apt knows.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${1:-$REPO/target/qemu-cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

log() { echo "prepare: $*" >&2; }
die() { echo "prepare: ERROR: $*" >&2; exit 1; }

# One prepare at a time per cache (parallel CI jobs sharing a cache).
exec 9>"$CACHE/.lock"
flock 9

# shellcheck source=tests/qemu/apt.sh
. "$HERE/apt.sh"

# ---------------------------------------------------------------------------------------------
# 1. host packages
# busybox-static conflicts with the dynamic "busybox" package. If the host has the latter (e.g.
# for initramfs-tools), do not replace it: unpack busybox-static into the cache instead.
NEED=()
command -v qemu-system-x86_64 >/dev/null || NEED+=(qemu-system-x86)
command -v cpio >/dev/null || NEED+=(cpio)
command -v depmod >/dev/null || NEED+=(kmod)
command -v gzip >/dev/null || NEED+=(gzip)
BUSYBOX=
if pkg_installed busybox-static; then
    BUSYBOX=/bin/busybox
elif ! pkg_installed busybox; then
    NEED+=(busybox-static)
    BUSYBOX=/bin/busybox
fi
if [ ${#NEED[@]} -gt 0 ]; then
    log "installing: ${NEED[*]}"
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${NEED[@]}" >&2 || die "apt-get install ${NEED[*]} failed"
fi

mkdir -p "$CACHE/debs"
if [ -z "$BUSYBOX" ]; then
    BB_DIR=$CACHE/busybox-static
    if [ ! -x "$BB_DIR/bin/busybox" ]; then
        log "host has the dynamic busybox package; unpacking busybox-static into the cache"
        rm -f "$CACHE"/debs/busybox-static_*.deb
        apt_download busybox-static "$CACHE/debs" || { apt_update_once; apt_download busybox-static "$CACHE/debs"; } \
            || die "apt-get download busybox-static failed"
        unpack_deb "$(ls "$CACHE"/debs/busybox-static_*.deb | head -1)" "$BB_DIR"
    fi
    BUSYBOX=$BB_DIR/bin/busybox
fi
[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX"
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked; need busybox-static"

# ---------------------------------------------------------------------------------------------
# 2. guest kernel
resolve_kernel_pkg() {
    local p
    p=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -1)
    if [ -z "$p" ]; then
        p=$(apt-cache pkgnames linux-image- 2>/dev/null | grep -E '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' |
            sort -V | tail -1)
    fi
    echo "$p"
}

KPKG=${INTXD_QEMU_KERNEL_PKG:-}
if [ -z "$KPKG" ] && [ -f "$CACHE/env" ]; then
    KPKG=$(sed -n 's/^KPKG=//p' "$CACHE/env" | tr -d "'\"")
    KDIR=$CACHE/kernel/$KPKG
    [ -n "$KPKG" ] && [ -d "$KDIR/boot" ] || KPKG=
fi
[ -n "$KPKG" ] || KPKG=$(resolve_kernel_pkg)
if [ -z "$KPKG" ]; then
    apt_update_once
    KPKG=$(resolve_kernel_pkg)
fi
[ -n "$KPKG" ] || die "no linux-image-*-cloud-amd64 package in the apt sources"
KDIR=$CACHE/kernel/$KPKG

if [ ! -d "$KDIR/boot" ]; then
    log "downloading $KPKG"
    rm -f "$CACHE/debs/${KPKG}"_*.deb
    if ! apt_download "$KPKG" "$CACHE/debs"; then
        # stale package lists: the mirror has moved on; refresh and re-resolve unless forced
        apt_update_once
        [ -n "${INTXD_QEMU_KERNEL_PKG:-}" ] || KPKG=$(resolve_kernel_pkg)
        KDIR=$CACHE/kernel/$KPKG
        rm -f "$CACHE/debs/${KPKG}"_*.deb
        apt_download "$KPKG" "$CACHE/debs" || die "apt-get download $KPKG failed"
    fi
    DEB=$(ls "$CACHE/debs/${KPKG}"_*.deb | head -1)
    log "unpacking $(basename "$DEB")"
    mkdir -p "$CACHE/kernel"
    unpack_deb "$DEB" "$KDIR"
    rm -f "$DEB"   # the unpacked tree is the cache; the .deb is 26 MB of dead weight
fi

KVER=$(ls "$KDIR/lib/modules" | head -1)
[ -n "$KVER" ] || die "no lib/modules/<version> in $KDIR"
MODDIR=$KDIR/lib/modules/$KVER
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || die "no $VMLINUZ"
KPKG_VERSION=$(cat "$KDIR/.deb-version" 2>/dev/null || echo unknown)

if [ ! -s "$MODDIR/modules.dep" ]; then
    log "depmod -b $KDIR $KVER"
    depmod -b "$KDIR" "$KVER" || die "depmod failed"
fi

# the guest needs these; fail here, not in the guest
CONFIG=$KDIR/boot/config-$KVER
for opt in CONFIG_VFIO CONFIG_VFIO_PCI CONFIG_VFIO_IOMMU_TYPE1 CONFIG_KVM CONFIG_KVM_AMD CONFIG_INTEL_IOMMU \
           CONFIG_IRQ_REMAP CONFIG_DEVTMPFS; do
    grep -qE "^$opt=[ym]$" "$CONFIG" || die "$KPKG: $opt is not enabled (see $CONFIG)"
done

QEMU=$(command -v qemu-system-x86_64)

TMPENV=$(mktemp "$CACHE/env.XXXXXX")
cat > "$TMPENV" <<EOF
# written by tests/qemu/prepare.sh; sourced by mkinitrd.sh and run.sh
KPKG=$KPKG
KPKG_VERSION=$KPKG_VERSION
KVER=$KVER
VMLINUZ=$VMLINUZ
MODDIR=$MODDIR
BUSYBOX=$BUSYBOX
QEMU=$QEMU
EOF
mv "$TMPENV" "$CACHE/env"

log "ok: $KPKG $KPKG_VERSION, qemu $("$QEMU" --version | head -1 | sed 's/.*version //')"
cat "$CACHE/env"

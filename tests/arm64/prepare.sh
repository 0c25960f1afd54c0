#!/bin/bash
# tests/arm64/prepare.sh CACHE_DIR [SUITE]
#
# Prepares the arm64 lane (tests/arm64_lane.rs), idempotently:
#   * host packages (Debian): the arm64 foreign architecture, Debian's Rust cross toolchain
#     (rustc-web, cargo-web, libstd-rust-web-dev:arm64; rustup cannot fetch targets here),
#     gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-system-arm (+ firmware), cpio, kmod
#     (`apt-get update` runs only when something is missing);
#   * a Debian arm64 *cloud* kernel (what linux-image-cloud-arm64:arm64 depends on), busybox-static,
#     util-linux (prlimit) and libsmartcols1, all :arm64, fetched with `apt-get download` and
#     unpacked with `dpkg-deb -x` into the cache (never installed), plus modules.dep (`depmod -b`);
#   * CACHE_DIR/env, sourced by tests/qemu/mkinitrd.sh and tests/qemu/run.sh (ARCH=aarch64).
#
# SUITE: empty (default) = the host's own Debian release. Any other name (e.g. trixie) takes the
# kernel from that release: the script derives an apt source entry from the host's own Debian
# entry (same URI and keyring, suite changed) and keeps it, and its package lists, in a private
# apt state under CACHE_DIR/apt, so the host's apt configuration is not changed.
# Environment: INTXD_ARM64_KERNEL_PKG forces a kernel package.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:?usage: prepare.sh CACHE_DIR [SUITE]}
SUITE=${2:-}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

log() { echo "arm64-prepare: $*" >&2; }
die() { echo "arm64-prepare: ERROR: $*" >&2; exit 1; }

exec 9>"$CACHE/.lock"
flock 9

# shellcheck source=tests/qemu/apt.sh
. "$HERE/../qemu/apt.sh"

# ---------------------------------------------------------------------------------------------
# 1. host packages
dpkg --print-foreign-architectures | grep -qx arm64 || {
    [ "$(id -u)" = 0 ] || die "need root for dpkg --add-architecture arm64"
    log "dpkg --add-architecture arm64"; dpkg --add-architecture arm64; APT_UPDATED=0
    apt_update_once
}
NEED=()
for p in rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
         qemu-system-arm qemu-efi-aarch64 ipxe-qemu cpio kmod; do
    pkg_installed "$p" || NEED+=("$p")
done
if [ ${#NEED[@]} -gt 0 ]; then
    log "installing: ${NEED[*]}"
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${NEED[@]}" >&2 || die "apt-get install ${NEED[*]} failed"
fi

# ---------------------------------------------------------------------------------------------
# 2. another Debian release's package lists, in a private apt state
if [ -n "$SUITE" ]; then
    A=$CACHE/apt
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/parts"
    # The host's entry for its main Debian archive (deb822 or one-line): URI and keyring.
    HOSTSUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
    ENTRY=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$HOSTSUITE" '
        /^[[:space:]]*$/ { if (u != "" && ok) { print u, k; exit } u = ""; k = ""; ok = 0; next }
        /^URIs:/ { u = $2 } /^Signed-By:/ { k = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
        END { if (u != "" && ok) print u, k }')
    if [ -z "$ENTRY" ]; then
        ENTRY=$(sed -n "s/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) $HOSTSUITE .*/\2/p" \
                    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
    fi
    [ -n "$ENTRY" ] || die "no apt entry for the host's release ($HOSTSUITE) to derive a $SUITE entry from"
    read -r URI KEY <<< "$ENTRY"
    KEY=${KEY:-/usr/share/keyrings/debian-archive-keyring.gpg}
    echo "deb [arch=arm64 signed-by=$KEY] $URI $SUITE main" > "$A/sources.list"
    APT_OPTS=(-o "Dir::State=$A" -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
              -o "Dir::Etc::SourceList=$A/sources.list" -o "Dir::Etc::SourceParts=$A/parts"
              -o APT::Architectures=arm64 -o APT::Architecture=arm64 -o Acquire::Languages=none
              -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
    if [ -z "$(ls "$A/lists"/*Packages* 2>/dev/null)" ]; then
        log "private apt state for $SUITE ($A/sources.list, derived from the host's $HOSTSUITE entry)"
        apt_update_once
    fi
fi
apt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }
KARCH=:arm64
[ -n "$SUITE" ] && KARCH=   # the private state knows only arm64

# ---------------------------------------------------------------------------------------------
# 3. kernel, busybox, prlimit (all arm64, unpacked)
mkdir -p "$CACHE/debs" "$CACHE/kernel"
resolve_kernel_pkg() {
    apt_cache depends "linux-image-cloud-arm64$KARCH" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ :]*-cloud-arm64\)\(:arm64\)\{0,1\}$/\1/p' | head -1
}
KPKG=${INTXD_ARM64_KERNEL_PKG:-}
if [ -z "$KPKG" ] && [ -f "$CACHE/env" ]; then
    KPKG=$(sed -n 's/^KPKG=//p' "$CACHE/env")
    [ -d "$CACHE/kernel/$KPKG/boot" ] || KPKG=
fi
[ -n "$KPKG" ] || KPKG=$(resolve_kernel_pkg)
[ -n "$KPKG" ] || { apt_update_once; KPKG=$(resolve_kernel_pkg); }
[ -n "$KPKG" ] || die "no linux-image-*-cloud-arm64 package in the apt sources"
KDIR=$CACHE/kernel/$KPKG

fetch() { # pkg dest-dir
    [ -e "$2/.deb-version" ] && return 0
    log "downloading $1"
    rm -f "$CACHE"/debs/*.deb
    apt_download "$1$KARCH" "$CACHE/debs" || { apt_update_once; apt_download "$1$KARCH" "$CACHE/debs"; } ||
        die "apt-get download $1$KARCH failed"
    unpack_deb "$(ls "$CACHE"/debs/*.deb | head -1)" "$2"
    rm -f "$CACHE"/debs/*.deb
}
fetch "$KPKG" "$KDIR"
# busybox and util-linux from the host's own release (the kernel does not care)
SAVED=("${APT_OPTS[@]}"); APT_OPTS=(); SAVED_KARCH=$KARCH; KARCH=:arm64; SAVED_UPD=$APT_UPDATED; APT_UPDATED=0
fetch busybox-static "$CACHE/busybox"
fetch util-linux "$CACHE/util-linux"
fetch libsmartcols1 "$CACHE/libsmartcols1"
APT_OPTS=("${SAVED[@]}"); KARCH=$SAVED_KARCH; APT_UPDATED=$SAVED_UPD

KVER=$(ls "$KDIR/lib/modules" | head -1)
[ -n "$KVER" ] || die "no lib/modules/<version> in $KDIR"
MODDIR=$KDIR/lib/modules/$KVER
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || die "no $VMLINUZ"
[ -s "$MODDIR/modules.dep" ] || { log "depmod -b $KDIR $KVER"; depmod -b "$KDIR" "$KVER" || die "depmod failed"; }
CONFIG=$KDIR/boot/config-$KVER
for opt in CONFIG_KVM CONFIG_VFIO CONFIG_VFIO_PCI CONFIG_VFIO_IOMMU_TYPE1 CONFIG_ARM_SMMU_V3 \
           CONFIG_SECCOMP_FILTER CONFIG_DEVTMPFS; do
    grep -qE "^$opt=[ym]$" "$CONFIG" || die "$KPKG: $opt is not enabled (see $CONFIG)"
done
QEMU=$(command -v qemu-system-aarch64) || die "no qemu-system-aarch64"

TMPENV=$(mktemp "$CACHE/env.XXXXXX")
cat > "$TMPENV" <<EOF
# written by tests/arm64/prepare.sh; sourced by tests/qemu/mkinitrd.sh and tests/qemu/run.sh
ARCH=aarch64
SUITE=${SUITE:-host}
KPKG=$KPKG
KPKG_VERSION=$(cat "$KDIR/.deb-version")
KVER=$KVER
VMLINUZ=$VMLINUZ
MODDIR=$MODDIR
BUSYBOX=$CACHE/busybox/bin/busybox
QEMU=$QEMU
CROSS_LIBDIR=/usr/aarch64-linux-gnu/lib
MODULES=irqbypass?,vfio,vfio_iommu_type1,vfio_pci_core,vfio_pci,kvm?
PRLIMIT=$CACHE/util-linux/usr/bin/prlimit
EXTRA_LIBS=$CACHE/libsmartcols1/usr/lib/aarch64-linux-gnu
EOF
mv "$TMPENV" "$CACHE/env"
log "ok: $KPKG $(cat "$KDIR/.deb-version"), $("$QEMU" --version | head -1 | sed 's/.*version //')"
cat "$CACHE/env"

#!/bin/bash
# tests/qemu/mkinitrd.sh CACHE_DIR INTXD_BINARY GUEST_SCRIPT OUT.cpio.gz [SRC:DEST ...]
#
# Builds a busybox initramfs for the QEMU/VFIO guest tests:
#   /bin/busybox + applet links      (static busybox from prepare.sh)
#   /bin/intxd                       INTXD_BINARY (debug info stripped unless INTXD_QEMU_STRIP=0),
#                                    plus every shared library `ldd` lists and the dynamic loader
#   /lib/modules/intxd-qemu/*.ko     vfio, vfio_iommu_type1, vfio_pci_core, vfio_pci, irqbypass, kvm,
#                                    kvm_amd, kvm_intel (if present) and their modules.dep dependencies,
#                                    decompressed; *.order files give the load order
#   /init                            tests/qemu/guest-init.sh
#   /test.sh                         GUEST_SCRIPT (run by /init with busybox sh)
#   optional extra files: SRC:DEST pairs (DEST absolute inside the guest); an executable ELF SRC
#                                    is stripped and gets its libraries, as intxd does
# Run prepare.sh CACHE_DIR first (tests/arm64/prepare.sh for an arm64 guest: its env sets
# ARCH=aarch64, CROSS_LIBDIR (libraries come from there, found with readelf, not ldd), EXTRA_LIBS
# and MODULES, the module list; x86's KVM vendor modules are then left out).
# INTXD_QEMU_MODULES_EXTRA: more modules (comma-separated, as MODULES) loaded after those, e.g.
# virtio_pci,virtio_rng for the shared-line scenario's guest driver.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "mkinitrd: ERROR: $*" >&2; exit 1; }
[ $# -ge 4 ] || die "usage: $0 CACHE_DIR INTXD_BINARY GUEST_SCRIPT OUT.cpio.gz [SRC:DEST ...]"
CACHE=$1 INTXD=$2 GUEST_SCRIPT=$3 OUT=$4
shift 4
[ -f "$CACHE/env" ] || die "$CACHE/env missing: run tests/qemu/prepare.sh $CACHE first"
# shellcheck disable=SC1091
. "$CACHE/env"
[ -x "$INTXD" ] || die "intxd binary '$INTXD' is not an executable file"
[ -f "$GUEST_SCRIPT" ] || die "guest script '$GUEST_SCRIPT' not found"
[ -s "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep missing: re-run prepare.sh"

R=$(mktemp -d "${TMPDIR:-/tmp}/intxd-initrd.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,proc,sys,dev,run,tmp,etc,root,lib/modules/intxd-qemu}
chmod 0755 "$R"; chmod 1777 "$R/tmp"

# ---- busybox ----------------------------------------------------------------------------------
cp "$BUSYBOX" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
# e.g. bin/sh, sbin/insmod, usr/bin/timeout; a foreign busybox does not run here, and /init
# installs its links in the guest (busybox --install -s)
for a in $("$R/bin/busybox" --list-full 2>/dev/null); do
    [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
# root, and nobody for the tests that drop to uid 65534
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
ARCH=${ARCH:-x86_64}
CROSS=
[ "$ARCH" = "$(uname -m)" ] || CROSS=$ARCH-linux-gnu-

# ---- a dynamically linked binary and its libraries ----------------------------------------------
copy_with_libs() { # src dest-in-guest
    local src=$1 dst=$2
    install -D -m 0755 "$src" "$R$dst"
    if [ "${INTXD_QEMU_STRIP:-1}" != 0 ] && command -v "${CROSS}strip" >/dev/null; then
        "${CROSS}strip" --strip-debug "$R$dst" 2>/dev/null || true
    fi
    if [ -n "$CROSS" ]; then copy_cross_libs "$src"; return; fi
    local out
    if ! out=$(ldd "$src" 2>&1); then
        case $out in
            *"not a dynamic executable"*|*"statically linked"*) return 0 ;;
            *) die "ldd $src: $out" ;;
        esac
    fi
    printf '%s\n' "$out" | grep -q 'not found' && die "ldd $src: missing libraries:
$(printf '%s\n' "$out" | grep 'not found')"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)" and "/lib64/ld-linux-x86-64.so.2 (0x..)"
    local lib
    for lib in $(printf '%s\n' "$out" | sed -n -e 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p'); do
        [ -e "$R$lib" ] && continue
        install -D -m 0755 "$(readlink -f "$lib")" "$R$lib"   # same path as on the host, symlinks resolved
    done
}
# A foreign binary: ldd cannot run it. Follow its interpreter and DT_NEEDED entries (readelf)
# into CROSS_LIBDIR / EXTRA_LIBS, and put each library in /lib, the loader's default path.
copy_cross_libs() { # binary
    local todo=$1 f lib dir found interp
    interp=$("${CROSS}readelf" -l "$1" 2>/dev/null | sed -n 's/.*program interpreter: \(.*\)\]/\1/p')
    if [ -n "$interp" ] && [ ! -e "$R$interp" ]; then
        install -D -m 0755 "$(readlink -f "$CROSS_LIBDIR/$(basename "$interp")")" "$R$interp"
    fi
    while [ -n "$todo" ]; do
        f=${todo%% *}; todo=${todo#"$f"}; todo=${todo# }
        for lib in $("${CROSS}readelf" -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$R/lib/$lib" ] && continue
            found=
            for dir in "$CROSS_LIBDIR" ${EXTRA_LIBS:-}; do
                [ -e "$dir/$lib" ] && { found=$(readlink -f "$dir/$lib"); break; }
            done
            [ -n "$found" ] || die "$f needs $lib, which is in neither $CROSS_LIBDIR nor ${EXTRA_LIBS:-(no EXTRA_LIBS)}"
            install -D -m 0755 "$found" "$R/lib/$lib"
            todo="$todo $found"; todo=${todo# }
        done
    done
}
copy_with_libs "$INTXD" /bin/intxd

# ---- kernel modules -----------------------------------------------------------------------------
# resolve NAME[?] lists (names with - or _, "?" = optional) against modules.dep; print
# "<name> <relpath>" with dependencies first, skipping names in EXCLUDE.
resolve_modules() { # want exclude
    awk -v want="$1" -v exclude="$2" '
        function modname(p,   b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.(xz|zst|gz))?$/, "", b); gsub(/-/, "_", b); return b }
        function visit(n,   i, k, d) {
            if (n in done) return
            done[n] = 1
            k = split(deps[n], d, " ")
            for (i = 1; i <= k; i++) visit(d[i])
            print n, path[n]
        }
        {
            p = $1; sub(/:$/, "", p); n = modname(p); path[n] = p; deps[n] = ""
            for (i = 2; i <= NF; i++) deps[n] = deps[n] " " modname($i)
        }
        END {
            k = split(exclude, e, ","); for (i = 1; i <= k; i++) if (e[i] != "") done[e[i]] = 1
            k = split(want, w, ",")
            for (i = 1; i <= k; i++) {
                n = w[i]; opt = sub(/\?$/, "", n); gsub(/-/, "_", n)
                if (!(n in path)) { if (!opt) { print "missing module: " n > "/dev/stderr"; bad = 1 }; continue }
                visit(n)
            }
            exit bad
        }' "$MODDIR/modules.dep"
}

install_modules() { # order-file
    local name rel src dst
    while read -r name rel; do
        src=$MODDIR/$rel
        dst=$R/lib/modules/intxd-qemu/$name.ko
        case $rel in
            *.ko) cp "$src" "$dst" ;;
            *.ko.xz) xz -dc "$src" > "$dst" ;;
            *.ko.zst) zstd -qdc "$src" > "$dst" ;;
            *.ko.gz) gzip -dc "$src" > "$dst" ;;
            *) die "unknown module file type: $rel" ;;
        esac
        echo "$name $name.ko"
    done
}

O=$R/lib/modules/intxd-qemu
COMMON=$(resolve_modules "${MODULES:-irqbypass,vfio,vfio_iommu_type1,vfio_pci_core,vfio_pci,kvm}${INTXD_QEMU_MODULES_EXTRA:+,$INTXD_QEMU_MODULES_EXTRA}" "") ||
    die "cannot resolve modules in $MODDIR/modules.dep"
EXCL=$(printf '%s\n' "$COMMON" | cut -d' ' -f1 | paste -sd,)
AMD= INTEL=
if [ "$ARCH" = x86_64 ]; then
    AMD=$(resolve_modules kvm_amd "$EXCL") || die "cannot resolve kvm_amd"
    INTEL=$(resolve_modules 'kvm_intel?' "$EXCL") || die "cannot resolve kvm_intel"
fi
printf '%s\n' "$COMMON" | install_modules > "$O/common.order"
[ -z "$AMD" ] || printf '%s\n' "$AMD" | install_modules > "$O/amd.order"
[ -z "$INTEL" ] || printf '%s\n' "$INTEL" | install_modules > "$O/intel.order"
echo "$KVER" > "$O/kernel-version"

# ---- init, test script, extras --------------------------------------------------------------------
install -m 0755 "$HERE/guest-init.sh" "$R/init"
install -m 0755 "$GUEST_SCRIPT" "$R/test.sh"
for x in "$@"; do
    src=${x%%:*} dst=${x#*:}
    [ "$src" != "$x" ] && [ "${dst#/}" != "$dst" ] || die "extra file '$x': want SRC:/abs/DEST"
    if [ -f "$src" ] && [ -x "$src" ] && [ "$(head -c4 "$src" | od -An -c | tr -d ' ')" = 177ELF ]; then
        copy_with_libs "$src" "$dst"
    else
        install -D "$src" "$R$dst"
    fi
done

# ---- pack -----------------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "mkinitrd: $OUT ($(du -k "$OUT" | cut -f1) KiB; kernel $KVER; modules:" \
     "$(cat "$O"/common.order "$O"/amd.order "$O"/intel.order 2>/dev/null | cut -d' ' -f1 | paste -sd' '))" >&2

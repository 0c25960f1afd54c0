# tests/qemu/apt.sh: apt helpers shared by tests/qemu/prepare.sh and tests/arm64/prepare.sh
# (sourced, bash). The caller defines log() and die(). APT_OPTS (an array, default empty) adds
# options to every apt-get call, e.g. a private package list state (tests/arm64/prepare.sh).
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
[ -n "${APT_OPTS+x}" ] || APT_OPTS=()
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || die "need root to run apt-get update/install"
    log "apt-get update"
    apt-get "${APT_OPTS[@]}" update -qq >&2 || die "apt-get update failed"
    APT_UPDATED=1
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# apt-get download as root into a directory _apt cannot read works but warns; keep it quiet.
apt_download() { # pkg dir
    local out rc=0
    out=$(cd "$2" && apt-get "${APT_OPTS[@]}" download -q "$1" 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -v -e 'Download is performed unsandboxed' -e '^$' >&2 || true
    return $rc
}

# unpack_deb DEB DIR: dpkg-deb -x into DIR (replaced atomically); never installed.
unpack_deb() {
    rm -rf "$2.tmp" && dpkg-deb -x "$1" "$2.tmp"
    # trixie and later ship modules under usr/lib/modules; depmod -b wants <base>/lib/modules
    if [ ! -e "$2.tmp/lib" ] && [ -d "$2.tmp/usr/lib/modules" ]; then ln -s usr/lib "$2.tmp/lib"; fi
    dpkg-deb -f "$1" Version > "$2.tmp/.deb-version"
    rm -rf "$2" && mv "$2.tmp" "$2"
}

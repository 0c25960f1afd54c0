//! Whether the host uses a function, so that a bind does not pull a NIC,
//! a disk or the console from under it without `force = true`.
//!
//! What counts as in use, found by walking the function's sysfs directory
//! (real directories only, symlinks not followed) for class devices, told
//! apart by their `subsystem` link:
//!
//! - a network interface (`subsystem` -> `net`) that has an IPv4 route
//!   (`/proc/net/route`: every IPv4 address with a prefix brings its subnet
//!   route), an IPv6 address other than link-local (`/proc/net/if_inet6`),
//!   or a `master` (it is a bridge port or bond member). Interfaces are seen
//!   in the daemon's network namespace; an IPv4 address without a prefix
//!   route (`/32`, `noprefixroute`) is not seen;
//! - a block device or partition (`subsystem` -> `block`) that is mounted
//!   (`/dev/<name>` in `/proc/mounts`), used as swap (`/proc/swaps`) or held
//!   by another block device such as device-mapper or md (`holders/*`);
//! - the boot display (`boot_vga` = 1), which firmware framebuffers drive
//!   even without a PCI driver.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::config::PciAddr;

use super::error::{BindStep, Cause, PciError};
use super::identify::{identify, Target};
use super::io::{EntryKind, SysfsIo};

/// How deep the walk goes below the function's directory.
const MAX_DEPTH: usize = 8;
/// How many directories the walk visits at most.
const MAX_DIRS: usize = 4096;

/// One way the host uses a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InUse {
    /// A network interface with IPv4 routes.
    NetRoutes {
        /// The interface.
        ifname: String,
        /// The routes, e.g. `default via 192.0.2.1`, `192.0.2.0/24`.
        routes: Vec<String>,
    },
    /// A network interface with IPv6 addresses beyond link-local.
    NetAddresses {
        /// The interface.
        ifname: String,
        /// The addresses, with prefix length.
        addrs: Vec<String>,
    },
    /// A network interface enslaved to a bridge or bond.
    NetMember {
        /// The interface.
        ifname: String,
        /// Its master.
        master: String,
    },
    /// A mounted block device.
    Mounted {
        /// The block device, e.g. `nvme0n1p1`.
        dev: String,
        /// Where it is mounted.
        on: String,
    },
    /// A block device used as swap.
    Swap {
        /// The block device.
        dev: String,
    },
    /// A block device held by another (device-mapper, md, ...).
    Held {
        /// The block device.
        dev: String,
        /// The holder, e.g. `dm-0`.
        by: String,
    },
    /// The boot display.
    BootVga,
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::NetRoutes { ifname, routes } => write!(
                f,
                "network interface {ifname} has IPv4 routes ({})",
                routes.join(", ")
            ),
            InUse::NetAddresses { ifname, addrs } => write!(
                f,
                "network interface {ifname} has IPv6 addresses ({})",
                addrs.join(", ")
            ),
            InUse::NetMember { ifname, master } => {
                write!(f, "network interface {ifname} is enslaved to {master}")
            }
            InUse::Mounted { dev, on } => write!(f, "block device {dev} is mounted on {on}"),
            InUse::Swap { dev } => write!(f, "block device {dev} is used as swap"),
            InUse::Held { dev, by } => write!(f, "block device {dev} is held by {by}"),
            InUse::BootVga => f.write_str("it is the boot display (boot_vga = 1)"),
        }
    }
}

/// Class devices found below a function.
#[derive(Debug, Default)]
struct Found {
    /// Network interfaces: name and directory.
    net: Vec<(String, PathBuf)>,
    /// Block devices and partitions: name and directory.
    block: Vec<(String, PathBuf)>,
}

fn walk(sys: &dyn SysfsIo, dir: &Path, depth: usize, budget: &mut usize, found: &mut Found) {
    if depth > MAX_DEPTH || *budget == 0 {
        return;
    }
    *budget -= 1;
    let Ok(entries) = sys.list(dir) else { return };
    for e in entries.into_iter().filter(|e| e.kind == EntryKind::Dir) {
        let sub = dir.join(&e.name);
        match sys
            .link_name(&sub.join("subsystem"))
            .ok()
            .flatten()
            .as_deref()
        {
            Some("net") => found.net.push((e.name.clone(), sub.clone())),
            Some("block") => found.block.push((e.name.clone(), sub.clone())),
            _ => {}
        }
        walk(sys, &sub, depth + 1, budget, found);
    }
}

/// A procfs file's text; a missing file (IPv6 or swap compiled out) is empty.
fn proc_text(proc: &dyn SysfsIo, rel: &str) -> io::Result<String> {
    match proc.read(Path::new(rel)) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// `/proc/net/route` holds addresses as host-order hex of the raw bytes.
fn route_addr(hex: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(hex, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
}

/// The IPv4 routes through `ifname`, from `/proc/net/route`.
fn ipv4_routes(text: &str, ifname: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != ifname {
            continue;
        }
        let (Some(dest), Some(gw), Some(mask)) =
            (route_addr(f[1]), route_addr(f[2]), route_addr(f[7]))
        else {
            continue;
        };
        let plen = u32::from(mask).count_ones();
        let mut r = if plen == 0 && dest.is_unspecified() {
            "default".to_string()
        } else {
            format!("{dest}/{plen}")
        };
        if !gw.is_unspecified() {
            r.push_str(&format!(" via {gw}"));
        }
        out.push(r);
    }
    out
}

/// The IPv6 addresses of `ifname` but link-local ones, from
/// `/proc/net/if_inet6` (address, ifindex, prefix length, scope, flags, name).
fn ipv6_addrs(text: &str, ifname: &str) -> Vec<String> {
    const SCOPE_LINK: u32 = 0x20;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != ifname {
            continue;
        }
        let (Ok(a), Ok(plen), Ok(scope)) = (
            u128::from_str_radix(f[0], 16),
            u8::from_str_radix(f[2], 16),
            u32::from_str_radix(f[3], 16),
        ) else {
            continue;
        };
        if scope == SCOPE_LINK {
            continue;
        }
        out.push(format!("{}/{plen}", Ipv6Addr::from(a)));
    }
    out
}

/// Lists how the host uses the function at `addr`: network interfaces,
/// block devices and the boot display, as the module docs describe. `sys`
/// is the sysfs root, `proc` the procfs root. Reads only.
pub fn find_uses(
    sys: &dyn SysfsIo,
    proc: &dyn SysfsIo,
    name: &str,
    addr: PciAddr,
) -> Result<Vec<InUse>, PciError> {
    let info = identify(sys, name, addr)?;
    let t = Target::new(name, addr)?;
    let refuse = |source: io::Error| PciError::Refused {
        device: t.name.clone(),
        addr,
        step: BindStep::CheckInUse,
        source: Cause::Io(source),
    };
    let mut found = Found::default();
    let mut budget = MAX_DIRS;
    walk(sys, &t.dir(), 0, &mut budget, &mut found);
    let mut uses = Vec::new();
    if !found.net.is_empty() {
        let routes = proc_text(proc, "net/route").map_err(refuse)?;
        let inet6 = proc_text(proc, "net/if_inet6").map_err(refuse)?;
        for (ifname, dir) in &found.net {
            let r = ipv4_routes(&routes, ifname);
            if !r.is_empty() {
                uses.push(InUse::NetRoutes {
                    ifname: ifname.clone(),
                    routes: r,
                });
            }
            let a = ipv6_addrs(&inet6, ifname);
            if !a.is_empty() {
                uses.push(InUse::NetAddresses {
                    ifname: ifname.clone(),
                    addrs: a,
                });
            }
            if let Ok(Some(master)) = sys.link_name(&dir.join("master")) {
                uses.push(InUse::NetMember {
                    ifname: ifname.clone(),
                    master,
                });
            }
        }
    }
    if !found.block.is_empty() {
        let mounts = proc_text(proc, "mounts").map_err(refuse)?;
        let swaps = proc_text(proc, "swaps").map_err(refuse)?;
        for (dev, dir) in &found.block {
            let node = format!("/dev/{dev}");
            for line in mounts.lines() {
                let mut f = line.split_whitespace();
                if let (Some(src), Some(on)) = (f.next(), f.next()) {
                    if src == node {
                        uses.push(InUse::Mounted {
                            dev: dev.clone(),
                            on: on.replace("\\040", " "),
                        });
                    }
                }
            }
            if swaps
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(node.as_str()))
            {
                uses.push(InUse::Swap { dev: dev.clone() });
            }
            for h in sys.list(&dir.join("holders")).unwrap_or_default() {
                uses.push(InUse::Held {
                    dev: dev.clone(),
                    by: h.name,
                });
            }
        }
    }
    if info.boot_vga {
        uses.push(InUse::BootVga);
    }
    Ok(uses)
}

//! What survives a daemon restart: a small state record in a memfd, and the
//! names under which every fd of a live route and every client connection
//! are parked in systemd's fd store.
//!
//! | fd name | what |
//! |---|---|
//! | `state` | this record (a memfd with two slots, see [`StateFile`]) |
//! | `conn-<id>` | a client connection |
//! | `<device>-irq`, `<device>-resample` | the VMM's eventfds |
//! | `<device>-trigger`, `<device>-unmask` | a relay route's own eventfds |
//! | `<device>-dev` | what keeps the device open (VFIO fds, the sim host connection) |

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::control::proto::{IntxState, Owner};
use crate::route::{Irqchip, Mode};

/// Version of the record's layout.
pub const STATE_VERSION: u32 = 1;

/// A client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// Connection id.
    pub id: u64,
    /// Peer pid.
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer's supplementary gids.
    pub groups: Vec<u32>,
    /// Whether it said hello.
    pub hello: bool,
    /// The protocol version its hello agreed (absent from older records:
    /// read as 1, the only version then).
    #[serde(default = "version_one")]
    pub version: u32,
}

fn version_one() -> u32 {
    1
}

/// A live route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Device name.
    pub device: String,
    /// Its PCI address (checked against the config on adoption).
    pub pci: String,
    /// Route mode.
    pub mode: Mode,
    /// The VMM's irqchip.
    pub irqchip: Irqchip,
    /// The owning connection.
    pub conn_id: u64,
    /// The owner's credentials.
    pub owner: Owner,
    /// The route's INTx as its owner left it (`suspended`: adopted parked,
    /// not re-armed, until `resume_intx`). Absent from older records:
    /// `enabled`.
    #[serde(default = "intx_enabled")]
    pub intx: IntxState,
    /// A relay's state at a planned restart's park (absent otherwise: a
    /// crash leaves the record of the last change, not of the last turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayPark>,
}

/// What a relay route was doing when a planned restart parked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPark {
    /// The interrupt last sent to the VMM was waiting for its EOI (INTx
    /// masked).
    pub eoi_pending: bool,
    /// The resample eventfd's count then: a larger one at adoption means
    /// the EOI came while no daemon ran.
    pub resample_count: u64,
}

/// What a record without `intx` means.
fn intx_enabled() -> IntxState {
    IntxState::Enabled
}

/// Everything the next daemon needs besides the fds themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Layout version.
    pub version: u32,
    /// The next connection id to hand out.
    pub next_conn_id: u64,
    /// Connections.
    pub conns: Vec<ConnRecord>,
    /// Routes.
    pub routes: Vec<RouteRecord>,
}

/// The name of a connection's fd.
pub fn conn_fd_name(id: u64) -> String {
    format!("conn-{id}")
}

/// The name of one of a route's fds.
pub fn route_fd_name(device: &str, role: crate::vfio::ParkedFd) -> String {
    format!("{device}-{}", role.name())
}

/// The slot header: magic, sequence, body length, checksum (8 bytes each).
const MAGIC: [u8; 8] = *b"INTXDREC";
const HEADER: u64 = 32;
/// Where the second slot starts in a new file (it moves up, by powers of
/// two, when a record outgrows the space below it).
const FIRST_FAR: u64 = 64 * 1024;

/// FNV-1a over the sequence, the length and the body: a torn slot fails it.
fn checksum(seq: u64, body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let len = body.len() as u64;
    for b in seq
        .to_le_bytes()
        .iter()
        .chain(&len.to_le_bytes())
        .chain(body)
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One complete slot found in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    offset: u64,
    seq: u64,
    len: u64,
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The complete slot at `offset`, if there is one there.
fn slot_at(bytes: &[u8], offset: u64) -> Option<Slot> {
    let at = usize::try_from(offset).ok()?;
    let head = bytes.get(at..at.checked_add(HEADER as usize)?)?;
    if head[..8] != MAGIC {
        return None;
    }
    let (seq, len, sum) = (word(head, 8), word(head, 16), word(head, 24));
    let start = at + HEADER as usize;
    let body = bytes.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    (checksum(seq, body) == sum).then_some(Slot { offset, seq, len })
}

/// A test hook (`INTXD_TEST_HOOKS=1` with `INTXD_TEST_RECORD_PAUSE=N`): a
/// record write with at least `N` routes stops halfway through its slot for
/// an hour, so a test can kill the daemon inside the write.
#[derive(Debug, Clone, Copy)]
pub struct WritePause {
    /// The least number of routes a paused write holds.
    pub min_routes: usize,
}

impl WritePause {
    /// The hook, when the test hooks are on and the variable is set.
    pub fn from_env(test_hooks: bool) -> Option<WritePause> {
        let n = std::env::var("INTXD_TEST_RECORD_PAUSE").ok()?;
        (test_hooks && crate::daemon::TEST_HOOKS_BUILT)
            .then(|| n.parse().ok())
            .flatten()
            .map(|min_routes| WritePause { min_routes })
    }
}

/// The memfd that holds the record. systemd holds a duplicate of the same
/// open file, so what this daemon writes is what the next one reads.
///
/// A write never touches the newest complete record: the file has two
/// slots, at offset 0 and at a far offset (64 KiB, doubled whenever a
/// record outgrows it), each a header (magic, sequence number, length,
/// checksum) and the record's JSON. A write goes to the slot that does not
/// hold the newest record; a reader takes the complete slot with the
/// highest sequence. A daemon killed in the middle of a write leaves a torn
/// slot that fails its checksum, and the next daemon reads the record
/// before it.
pub struct StateFile {
    file: std::fs::File,
    /// The slot holding the newest complete record (`None`: nothing yet).
    newest: Option<Slot>,
    far: u64,
    pause: Option<WritePause>,
}

impl StateFile {
    /// A new, empty record file.
    pub fn create() -> std::io::Result<StateFile> {
        let fd =
            nix::sys::memfd::memfd_create("intxd-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        Ok(Self::adopt(fd))
    }

    /// Takes over the record a previous daemon parked.
    pub fn adopt(fd: OwnedFd) -> StateFile {
        StateFile {
            file: fd.into(),
            newest: None,
            far: FIRST_FAR,
            pause: None,
        }
    }

    /// Arms (or disarms) the write-pause test hook.
    pub fn set_pause(&mut self, pause: Option<WritePause>) {
        self.pause = pause;
    }

    /// The fd, for the fd store.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads the newest complete record. A file with no slot is empty (a
    /// new record) or holds the bare JSON an older daemon wrote in place.
    pub fn read(&mut self) -> std::io::Result<StateRecord> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        let mut far = FIRST_FAR;
        let mut offsets = vec![0];
        while far < size {
            offsets.push(far);
            far *= 2;
        }
        let newest = offsets
            .into_iter()
            .filter_map(|o| slot_at(&bytes, o))
            .max_by_key(|s| s.seq);
        let Some(slot) = newest else {
            if bytes.iter().all(|b| *b == 0) {
                return Ok(StateRecord::default());
            }
            if bytes.first() != Some(&b'{') {
                return Err(std::io::Error::other(
                    "no complete slot in the state record",
                ));
            }
            // An older daemon's record: its bytes are the slot to keep.
            self.newest = Some(Slot {
                offset: 0,
                seq: 0,
                len: size,
            });
            self.far = FIRST_FAR.max(size.next_power_of_two());
            return serde_json::from_slice(&bytes).map_err(std::io::Error::other);
        };
        self.newest = Some(slot);
        self.far = match slot.offset {
            0 => FIRST_FAR.max((HEADER + slot.len).next_power_of_two()),
            o => o,
        };
        let start = (slot.offset + HEADER) as usize;
        serde_json::from_slice(&bytes[start..start + slot.len as usize])
            .map_err(std::io::Error::other)
    }

    /// Where the next record of `need` bytes goes: never over the newest.
    fn target(&mut self, need: u64) -> u64 {
        match self.newest {
            Some(s) if s.offset == 0 => self.far,
            _ if need <= self.far => 0,
            s => {
                let end = s.map_or(0, |s| s.offset + HEADER + s.len);
                self.far = FIRST_FAR.max(end.max(need).next_power_of_two());
                self.far
            }
        }
    }

    /// Writes `rec` as the newest record, in the slot the last one is not in.
    pub fn write(&mut self, rec: &StateRecord) -> std::io::Result<()> {
        let body = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        let seq = self.newest.map_or(1, |s| s.seq + 1);
        let len = body.len() as u64;
        let mut buf = Vec::with_capacity(body.len() + HEADER as usize);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&checksum(seq, &body).to_le_bytes());
        buf.extend_from_slice(&body);
        let offset = self.target(HEADER + len);
        match self.pause.filter(|p| rec.routes.len() >= p.min_routes) {
            #[cfg(feature = "test-hooks")]
            Some(_) => self.paused_write(&buf, offset)?,
            _ => self.file.write_all_at(&buf, offset)?,
        }
        self.newest = Some(Slot { offset, seq, len });
        Ok(())
    }
}

#[cfg(feature = "test-hooks")]
impl StateFile {
    /// The write-pause hook's write: half of it, an hour's sleep, the rest.
    fn paused_write(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let half = buf.len() / 2;
        self.file.write_all_at(&buf[..half], offset)?;
        log::warn!(
            "test hook: the state record write stops halfway ({half} of {} bytes at offset {offset})",
            buf.len()
        );
        std::thread::sleep(std::time::Duration::from_secs(3600));
        self.file.write_all_at(&buf[half..], offset + half as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(n: u64) -> StateRecord {
        StateRecord {
            version: STATE_VERSION,
            next_conn_id: n,
            ..Default::default()
        }
    }

    fn reopen(f: &StateFile) -> StateFile {
        StateFile::adopt(f.file.try_clone().unwrap().into())
    }

    #[test]
    fn each_write_alternates_slots_and_a_reader_takes_the_newest() {
        let mut f = StateFile::create().unwrap();
        assert_eq!(reopen(&f).read().unwrap(), StateRecord::default());
        let mut offsets = Vec::new();
        for n in 1..=4 {
            f.write(&rec(n)).unwrap();
            offsets.push(f.newest.unwrap().offset);
            assert_eq!(reopen(&f).read().unwrap(), rec(n));
        }
        assert_eq!(offsets, [0, FIRST_FAR, 0, FIRST_FAR]);
    }

    #[test]
    fn a_torn_write_leaves_the_record_before_it() {
        let mut f = StateFile::create().unwrap();
        f.write(&rec(1)).unwrap();
        f.write(&rec(2)).unwrap();
        // A write of record 3 into slot 0 that stopped halfway: its first
        // half over the tail of record 1.
        let mut before = vec![0u8; 200];
        f.file.read_exact_at(&mut before, 0).unwrap();
        let mut g = reopen(&f);
        g.newest = f.newest;
        g.write(&rec(3)).unwrap();
        assert_eq!(g.newest.unwrap().offset, 0);
        f.file.write_all_at(&before[20..], 20).unwrap();
        assert_eq!(
            reopen(&f).read().unwrap(),
            rec(2),
            "checksum refuses the torn slot"
        );
        let mut next = reopen(&f);
        assert_eq!(next.read().unwrap(), rec(2));
        next.write(&rec(4)).unwrap();
        assert_eq!(reopen(&f).read().unwrap(), rec(4));
    }

    #[test]
    fn a_record_that_outgrows_the_first_slot_moves_the_far_one_up() {
        let mut f = StateFile::create().unwrap();
        let mut big = rec(1);
        big.conns = (0..2000)
            .map(|id| ConnRecord {
                id,
                pid: 1,
                uid: 0,
                gid: 0,
                groups: vec![1, 2, 3],
                hello: true,
                version: 2,
            })
            .collect();
        f.write(&rec(1)).unwrap();
        f.write(&rec(2)).unwrap();
        f.write(&big).unwrap();
        let far = f.newest.unwrap().offset;
        assert!(far > FIRST_FAR, "{far}");
        assert_eq!(reopen(&f).read().unwrap(), big);
        let mut next = reopen(&f);
        next.read().unwrap();
        next.write(&rec(4)).unwrap();
        assert_eq!(next.newest.unwrap().offset, 0);
        assert_eq!(reopen(&f).read().unwrap(), rec(4));
    }

    #[test]
    fn a_route_record_keeps_its_intx_state_and_an_older_one_reads_as_enabled() {
        let text = r#"{"device":"sim0","pci":"sim:0","mode":"relay","irqchip":"user","conn_id":1,"owner":{"pid":1,"uid":0,"gid":0}}"#;
        let mut r: RouteRecord = serde_json::from_str(text).unwrap();
        assert_eq!(r.intx, IntxState::Enabled);
        r.intx = IntxState::Suspended;
        let back: RouteRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.intx, IntxState::Suspended);
    }

    #[test]
    fn an_older_daemons_bare_record_is_read_and_kept_until_replaced() {
        let f = StateFile::create().unwrap();
        let text = serde_json::to_vec(&rec(7)).unwrap();
        f.file.write_all_at(&text, 0).unwrap();
        let mut next = reopen(&f);
        assert_eq!(next.read().unwrap(), rec(7));
        next.write(&rec(8)).unwrap();
        assert_ne!(next.newest.unwrap().offset, 0);
        assert_eq!(reopen(&f).read().unwrap(), rec(8));
    }
}

//! Reading the config from disk: the main file, then the drop-ins of its
//! directory, each opened without blocking (a FIFO would wait for a writer
//! forever) and refused unless it is a regular file of at most
//! [`MAX_FILE_BYTES`].

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::daemon::{check_on_disk, daemon_section, devices_dir};
use super::error::{ConfigError, MAX_FILE_BYTES};
use super::source::Source;
use super::validate::{build, Config};

/// Loads the main config file and the drop-ins in its `devices.d/` (or
/// `daemon.devices_dir`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_file(path)?;
    let main = Source {
        file: path,
        text: &text,
    };
    let raw = main.parse()?;
    let daemon = daemon_section(&main, &raw)?;
    check_on_disk(&main, &raw, &daemon)?;
    super::metrics::check_on_disk(&main, &raw)?;
    let dir = devices_dir(path, &raw);
    let mut dropins = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    dropins.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { file: dir, source }),
    }
    dropins.sort();
    let mut texts = Vec::new();
    for p in dropins {
        let t = read_file(&p)?;
        texts.push((p, t));
    }
    let extra: Vec<(&Path, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    build(main, raw, daemon, &extra)
}

/// One config file's text. Opened with `O_NONBLOCK` (so a FIFO does not
/// wait for a writer) and checked with `fstat` before anything is read.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a plain file")
    };
    if let Some(kind) = kind {
        return Err(ConfigError::NotRegular {
            file: path.to_path_buf(),
            kind,
        });
    }
    let too_large = |size| ConfigError::TooLarge {
        file: path.to_path_buf(),
        size,
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    // The file may grow between the fstat and the read: read one byte past
    // the limit to notice.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

//! Logging set-up: simplelog to stderr (journald adds time) or to a file that
//! can be reopened after logrotate moved it.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::LevelFilter;
use simplelog::{ConfigBuilder, WriteLogger};

/// LogFile is a log file shared with the logger, reopened on SIGHUP.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// reopen switches to a fresh file at the same path (logrotate moved the old one).
    pub fn reopen(&self) -> io::Result<()> {
        let f = Self::open(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = f;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// init starts logging at `level`, to `file` or stderr; returns the file
/// handle for reopening. Safe to call once per process.
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<Option<LogFile>, String> {
    let mut b = ConfigBuilder::new();
    b.set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    match file {
        Some(path) => {
            let f = LogFile::open(path)
                .map_err(|e| format!("[log] file: cannot open {}: {e}", path.display()))?;
            b.set_time_format_rfc3339();
            let lf = LogFile {
                path: path.to_path_buf(),
                file: Arc::new(Mutex::new(f)),
            };
            // One write(2) per line: simplelog writes a record in many small pieces.
            let _ = WriteLogger::init(LevelFilter::Trace, b.build(), LineWriter::new(lf.clone()));
            set_level(level);
            Ok(Some(lf))
        }
        None => {
            // journald and the terminal add their own time stamps.
            b.set_time_level(LevelFilter::Off);
            let _ = WriteLogger::init(LevelFilter::Trace, b.build(), LineWriter::new(io::stderr()));
            set_level(level);
            Ok(None)
        }
    }
}

/// set_level changes the level at run time (config reload); the logger itself
/// is installed at Trace so that raising the level works too.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

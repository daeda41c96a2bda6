//! Export files: where a purge writes each message before it removes it.
//!
//! One JSON [`Record`] per line, the format `warren dead import` reads. A
//! file is always new (an export never overwrites one), readable by its
//! owner only (it holds event bodies), and flushed and synced at each
//! [`ExportSink::commit`], which a purge calls before it acks the messages
//! written since the last one: a purge stopped at any point (a timeout, a
//! client gone, a kill -9) leaves each event in `.dead` or in the file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::record::Record;
use super::visit::ExportSink;

/// An export file being written.
pub struct FileSink {
    out: BufWriter<File>,
    path: PathBuf,
    written: u64,
    /// A file warren named (not one the user chose): removed if it ends empty.
    ours: bool,
}

impl FileSink {
    /// Creates `path`, which must not exist, with mode 0600.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path, when the file exists or cannot be created.
    pub fn create(path: &Path) -> Result<Self, String> {
        let file = private_options()
            .open(path)
            .map_err(|e| format!("creating {} (an export never overwrites a file): {e}", path.display()))?;
        // The file's name must survive a crash too, not only its lines.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(Self {
            out: BufWriter::new(file),
            path: path.to_owned(),
            written: 0,
            ours: false,
        })
    }

    /// Creates a new file in `dir` (made, mode 0700, if missing), named
    /// `purge-<UTC time>-<random>.jsonl`; its path is absolute.
    ///
    /// # Errors
    ///
    /// As [`FileSink::create`], or the directory cannot be made.
    pub fn create_in(dir: &Path) -> Result<Self, String> {
        check_dir(dir)?;
        private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        // The last 8 hex digits of a v7 UUID are random bits.
        let random = &uuid::Uuid::now_v7().simple().to_string()[24..];
        let mut sink = Self::create(&dir.join(format!("purge-{stamp}-{random}.jsonl")))?;
        sink.ours = true;
        Ok(sink)
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Commits and closes the file. Returns its path; `None` when it was
    /// made by [`FileSink::create_in`] and holds no record (it is removed).
    ///
    /// # Errors
    ///
    /// The commit's error: the file is kept.
    pub fn finish(mut self) -> Result<Option<PathBuf>, String> {
        self.commit()?;
        Ok((self.written > 0 || !self.ours).then(|| self.path.clone()))
    }
}

/// A file of ours that holds nothing (the purge selected nothing, or never
/// ran) is not left behind.
impl Drop for FileSink {
    fn drop(&mut self) {
        if self.ours && self.written == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads an export: every line a record that can be published back, or an
/// error naming the line. Blank lines are skipped, and so is a last line
/// without its line break that is no record: a purge killed while writing
/// it never committed it, so its message is still parked.
///
/// # Errors
///
/// A message naming the file and, for a bad record, its line.
pub fn read_export(path: &Path) -> Result<Vec<Record>, String> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let r: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if !line.ends_with('\n') => break,
            Err(e) => return Err(format!("{}: not an export record: {e}", at())),
        };
        r.to_message().map_err(|e| format!("{}: {e}", at()))?;
        out.push(r);
    }
    Ok(out)
}

impl ExportSink for FileSink {
    fn write(&mut self, record: &Record) -> Result<(), String> {
        serde_json::to_writer(&mut self.out, record).map_err(|e| e.to_string())?;
        self.out.write_all(b"\n").map_err(|e| e.to_string())?;
        self.written += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| e.to_string())?;
        self.out.get_ref().sync_data().map_err(|e| e.to_string())
    }
}

/// Refuses a `dir` that exists and is not a directory: checked when a
/// server starts, before any purge needs it.
///
/// # Errors
///
/// A message naming the path.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
        _ => Ok(()),
    }
}

fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-export-{name}-{}", uuid::Uuid::now_v7().simple()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_file_in_a_new_directory_is_private_and_holds_what_was_committed() {
        let dir = temp_dir("new").join("exports");
        let mut sink = FileSink::create_in(&dir).unwrap();
        let record = Record::of("q.dead", &BasicProperties::default(), b"{\"a\":1}");
        sink.write(&record).unwrap();
        sink.write(&record).unwrap();
        sink.commit().unwrap();
        assert_eq!(sink.written(), 2);
        let name = sink.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("purge-") && name.ends_with(".jsonl"), "{name}");
        let text = std::fs::read_to_string(sink.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        let back: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back.to_message().unwrap().0, b"{\"a\":1}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(sink.path()), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        assert_eq!(read_export(sink.path()).unwrap().len(), 2);
        // Two purges in one millisecond still get two files; an empty one is removed.
        let other = FileSink::create_in(&dir).unwrap();
        let other_path = other.path().to_owned();
        assert_ne!(other_path, sink.path());
        assert_eq!(other.finish().unwrap(), None);
        assert!(!other_path.exists());
        let path = sink.path().to_owned();
        assert_eq!(sink.finish().unwrap(), Some(path));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_existing_file_is_never_overwritten_and_a_file_is_no_directory() {
        let dir = temp_dir("exists");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.jsonl");
        std::fs::write(&path, "kept\n").unwrap();
        let err = FileSink::create(&path).err().unwrap();
        assert!(err.contains("never overwrites"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
        let err = read_export(&path).unwrap_err();
        assert!(err.contains("line 1: not an export record"), "{err}");
        // A last line cut short (a purge killed while writing it) is no record yet.
        let record = serde_json::to_string(&Record::of("q.dead", &BasicProperties::default(), b"{}")).unwrap();
        std::fs::write(&path, format!("{record}\n{}", &record[..20])).unwrap();
        assert_eq!(read_export(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("{}\n{record}\n", &record[..20])).unwrap();
        assert!(read_export(&path).unwrap_err().contains("line 1"));
        let err = FileSink::create_in(&path).err().unwrap();
        assert!(err.contains("not a directory"), "{err}");
        assert!(check_dir(&path).is_err());
        assert!(check_dir(&dir).is_ok() && check_dir(&dir.join("missing")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! A log writer for stderr that scrubs secrets out of each whole event.

use std::io::{self, Write};
use std::sync::Arc;

use super::Scrubber;

/// Collects one formatted log event and writes it to stderr, scrubbed, when
/// flushed or dropped: the whole event is scrubbed at once, so no secret
/// can straddle two writes. A `tracing_subscriber` writer is a closure that
/// makes one per event: `.with_writer(move || ScrubbedStderr::new(scrubber.clone()))`.
pub struct ScrubbedStderr {
    scrubber: Arc<Scrubber>,
    buf: Vec<u8>,
}

impl ScrubbedStderr {
    /// A writer for one event.
    #[must_use]
    pub fn new(scrubber: Arc<Scrubber>) -> Self {
        Self {
            scrubber,
            buf: Vec::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let result = io::stderr().lock().write_all(self.scrubber.scrub(&text).as_bytes());
        self.buf.clear();
        result
    }
}

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        io::stderr().flush()
    }
}

impl Drop for ScrubbedStderr {
    fn drop(&mut self) {
        // Nowhere to report a failed write of a log line to.
        let _ = self.emit();
    }
}

//! Logs on stderr, filtered by `RUST_LOG`, with every secret of the settings
//! scrubbed out of each line whatever its level or target (lapin's `trace`
//! frames included; see `warren::secrets`).

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use warren::secrets::Scrubber;

/// Installs the global subscriber. It is built after the settings are
/// loaded, since only they say what the secrets are.
pub fn init(json: bool, scrubber: Scrubber) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warren=info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Scrubbing(scrubber));
    if json {
        fmt.json().init();
    } else {
        fmt.with_ansi(io::stderr().is_terminal()).init();
    }
}

/// Makes one [`ScrubbedEvent`] writer per event.
struct Scrubbing(Scrubber);

impl<'a> MakeWriter<'a> for Scrubbing {
    type Writer = ScrubbedEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedEvent {
            scrubber: &self.0,
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event and writes it, scrubbed, when dropped: the
/// whole event is scrubbed at once, so no secret can straddle two writes.
struct ScrubbedEvent<'a> {
    scrubber: &'a Scrubber,
    buf: Vec<u8>,
}

impl ScrubbedEvent<'_> {
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

impl Write for ScrubbedEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        io::stderr().flush()
    }
}

impl Drop for ScrubbedEvent<'_> {
    fn drop(&mut self) {
        // Nowhere to report a failed write of a log line to.
        let _ = self.emit();
    }
}

//! The pass visitors of the read-only operations (list, show) and of purge.

use std::collections::HashMap;

use lapin::message::Delivery;
use serde::Serialize;

use super::filter::{Filter, Selector};
use super::parked::Parked;
use super::record::Record;
use super::rotate::{Action, Visitor};

/// Collects the selected messages' summaries; keeps every message.
pub(crate) struct ListVisitor<'a> {
    pub selector: Selector<'a>,
    pub found: Vec<Parked>,
}

impl Visitor for ListVisitor<'_> {
    fn visit(&mut self, queue: &str, m: &Delivery) -> Action {
        let p = Parked::read(queue, &m.properties, &m.data);
        if self.selector.select(&p) {
            self.found.push(p);
        }
        Action::Keep
    }
}

/// Collects whole messages with one event id; keeps every message.
pub(crate) struct ShowVisitor<'a> {
    pub event_id: &'a str,
    pub found: Vec<Record>,
}

impl Visitor for ShowVisitor<'_> {
    fn visit(&mut self, queue: &str, m: &Delivery) -> Action {
        let p = Parked::read(queue, &m.properties, &m.data);
        if p.event_id.as_deref() == Some(self.event_id) {
            self.found.push(Record::of(queue, &m.properties, &m.data));
        }
        Action::Keep
    }
}

/// Where purged messages are written before they are removed.
pub trait ExportSink: Send {
    /// Buffers one record.
    ///
    /// # Errors
    ///
    /// A message; the message is then kept in `.dead`.
    fn write(&mut self, record: &Record) -> Result<(), String>;

    /// Makes every record written so far durable (flush, fsync).
    ///
    /// # Errors
    ///
    /// A message; the messages written since the last commit are kept.
    fn commit(&mut self) -> Result<(), String>;
}

/// No export: purged messages are gone.
impl ExportSink for () {
    fn write(&mut self, _: &Record) -> Result<(), String> {
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// The records, in memory. Nothing is durable: a caller that loses them
/// (a crash, an answer that never arrives) loses the events; the purges of
/// `warren dead` and of the HTTP route write a
/// [`FileSink`](super::FileSink) instead.
impl ExportSink for Vec<Record> {
    fn write(&mut self, record: &Record) -> Result<(), String> {
        self.push(record.clone());
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// The summary of a purge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Events removed from `.dead` (and, with an export, written there first).
    pub purged: Vec<Parked>,
    /// Events that may be both exported and still in `.dead` (the ack was lost).
    pub possible_duplicates: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Removes selected messages once the sink has them; keeps the others.
pub(crate) struct PurgeVisitor<'a> {
    pub selector: Selector<'a>,
    pub sink: &'a mut dyn ExportSink,
    pub report: PurgeReport,
    /// The first export failure: every message after it is kept.
    pub failed: Option<String>,
    removing: HashMap<u64, Parked>,
}

impl<'a> PurgeVisitor<'a> {
    pub(crate) fn new(filter: &'a Filter, sink: &'a mut dyn ExportSink) -> Self {
        Self {
            selector: Selector::new(filter),
            sink,
            report: PurgeReport::default(),
            failed: None,
            removing: HashMap::new(),
        }
    }
}

impl Visitor for PurgeVisitor<'_> {
    fn visit(&mut self, queue: &str, m: &Delivery) -> Action {
        let p = Parked::read(queue, &m.properties, &m.data);
        if self.failed.is_some() || !self.selector.select(&p) {
            return Action::Keep;
        }
        if let Err(e) = self.sink.write(&Record::of(queue, &m.properties, &m.data)) {
            self.failed = Some(e);
            return Action::Keep;
        }
        self.removing.insert(m.delivery_tag, p);
        Action::Remove
    }

    fn commit(&mut self) -> Result<(), String> {
        self.sink.commit()
    }

    fn done(&mut self, queue: &str, tag: u64) {
        if let Some(p) = self.removing.remove(&tag) {
            metrics::counter!(crate::metrics::DEAD_PURGED_TOTAL, "queue" => queue.to_owned()).increment(1);
            self.report.purged.push(p);
        }
    }
}

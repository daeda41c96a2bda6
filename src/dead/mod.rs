//! Operating on parked events: list, group, show, replay, purge (with an
//! export first) and import, over one service's `.dead` queues.
//!
//! Every operation is one pass per `.dead` queue (see [`rotate`]'s notes):
//! each message present when the pass starts is taken once, in order, and
//! copied back to the tail, moved to its work queue, or removed; the
//! original is acked only after its copy is confirmed by the broker (or its
//! export committed). Listing therefore leaves a queue as it found it (same
//! messages, order, properties and headers) and never raises a quorum
//! queue's delivery count; an interrupted operation can leave a duplicate,
//! never a loss.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren::dead::DeadError> {
//! use warren::dead::{DeadLetters, Filter};
//! let dead = DeadLetters::connect(&warren::Settings::default(), "dead-letters").await?;
//! for p in dead.list(&Filter::default(), &mut |_, _| {}).await? {
//!     println!("{:?} {} {:?}", p.event_id, p.reason, p.error);
//! }
//! # Ok(()) }
//! ```

mod export;
mod filter;
mod group;
mod marker;
mod parked;
mod record;
mod replay;
mod rotate;
mod visit;
pub mod watch;

use lapin::Connection;
use tokio_util::sync::CancellationToken;

pub use export::{FileSink, check_dir as check_export_dir, read_export};
pub use filter::{Filter, parse_time};
pub use group::{Group, error_class, group_id, groups};
pub use parked::{Parked, UNKNOWN_REASON};
pub use record::{Properties, Record, RecordError};
pub use replay::{DEFAULT_MAX_REPLAYS, ReplayOptions, ReplayReport, replay_properties};
pub use visit::{ExportSink, PurgeReport};

use crate::amqp::{self, ConnectError, ConnectOptions};
use crate::config::Settings;
use crate::topology::Topology;
use filter::Selector;
use replay::ReplayVisitor;
use rotate::Visitor;
use visit::{ListVisitor, PurgeVisitor, ShowVisitor};

/// Why a dead-letter operation failed. Messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{what}: {reason}")]
    Broker { what: String, reason: String },
    /// A copy or move reached no queue (the queue was deleted meanwhile).
    #[error("a message published to queue {0:?} was returned unroutable: is the topology declared?")]
    Unroutable(String),
    #[error("the broker refused a message: {0}")]
    Refused(String),
    #[error("{0:?} has no work queue {1:?} to replay to: run `warren topology apply`")]
    NoWorkQueue(String, String),
    #[error("exporting: {0}")]
    Export(String),
    /// An import record names a queue that is not one of this service's `.dead` queues.
    #[error("record {line}: queue {queue:?} is not a .dead queue of service {service:?} ({known})")]
    ForeignQueue {
        line: usize,
        queue: String,
        service: String,
        known: String,
    },
    #[error("record {line}: {reason}")]
    BadRecord { line: usize, reason: String },
    /// A `type` filter that names none of the service's event types: a
    /// typo would otherwise select nothing and look like an empty queue.
    #[error("unknown event type {given:?} in the filter; the types of this service are: {known}")]
    UnknownType { given: String, known: String },
}

impl DeadError {
    pub(crate) fn broker(what: &str, e: &lapin::Error) -> Self {
        Self::Broker {
            what: what.to_owned(),
            reason: amqp::describe(e),
        }
    }
}

/// Progress of an operation: messages visited so far, and the total the
/// queues held at the start.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// One service's `.dead` queues and a connection to operate on them.
pub struct DeadLetters {
    conn: Connection,
    topology: Topology,
}

impl DeadLetters {
    /// Connects as `role` (shown in the management console) to operate on the
    /// `.dead` queues of `settings.consumer.service`.
    ///
    /// # Errors
    ///
    /// [`DeadError::Connect`].
    pub async fn connect(settings: &Settings, role: &str) -> Result<Self, DeadError> {
        let conn = amqp::connect(&ConnectOptions::new(&settings.amqp, role)).await?;
        Ok(Self {
            conn,
            topology: Topology::from_settings(settings),
        })
    }

    /// The service's (event type, `.dead` queue) pairs the filter can select from.
    #[must_use]
    pub fn queues(&self, filter: &Filter) -> Vec<(String, String)> {
        let t = &self.topology;
        t.event_types
            .iter()
            .filter(|e| filter.reads_type(e))
            .map(|e| (e.clone(), t.dead_queue(e)))
            .collect()
    }

    /// Messages parked in each `.dead` queue (`None`: the queue does not exist).
    ///
    /// # Errors
    ///
    /// [`DeadError::Broker`].
    pub async fn counts(&self) -> Result<Vec<(String, Option<u32>)>, DeadError> {
        let mut out = Vec::new();
        for (_, q) in self.queues(&Filter::default()) {
            let n = rotate::count(&self.conn, &q).await?;
            out.push((q, n));
        }
        Ok(out)
    }

    /// [`DeadLetters::queues`], once the filter's type is checked: every
    /// operation that takes a filter selects its queues here.
    fn selected(&self, filter: &Filter) -> Result<Vec<(String, String)>, DeadError> {
        let known = &self.topology.event_types;
        match filter.event_type.as_deref() {
            Some(t) if !known.iter().any(|k| k == t) => Err(DeadError::UnknownType {
                given: crate::event::truncate(t, 100).to_owned(),
                known: known.join(", "),
            }),
            _ => Ok(self.queues(filter)),
        }
    }

    async fn total(&self, queues: &[(String, String)]) -> Result<u64, DeadError> {
        let mut total = 0;
        for (_, q) in queues {
            total += u64::from(rotate::count(&self.conn, q).await?.unwrap_or(0));
        }
        Ok(total)
    }

    /// One pass over each selected queue with `visitor`.
    async fn each_queue(
        &self,
        filter: &Filter,
        visitor: &mut dyn Visitor,
        stop: &CancellationToken,
        progress: Progress<'_>,
    ) -> Result<rotate::Pass, DeadError> {
        let queues = self.selected(filter)?;
        let total = self.total(&queues).await?;
        let (mut done, mut sum) = (0, rotate::Pass::default());
        for (_, q) in queues {
            let pass = rotate::pass(&self.conn, &q, visitor, stop, &mut |n| progress(done + n, total)).await?;
            done += pass.seen;
            sum.seen += pass.seen;
            sum.unsettled += pass.unsettled;
        }
        Ok(sum)
    }

    /// The parked events the filter selects, queue by queue, oldest parked
    /// first. Leaves every queue as it was.
    ///
    /// # Errors
    ///
    /// [`DeadError`] from the broker; the queues keep every message.
    pub async fn list(&self, filter: &Filter, progress: Progress<'_>) -> Result<Vec<Parked>, DeadError> {
        let mut v = ListVisitor {
            selector: Selector::new(filter),
            found: Vec::new(),
        };
        self.each_queue(filter, &mut v, &CancellationToken::new(), progress)
            .await?;
        Ok(v.found)
    }

    /// The groups of the selected events (`limit` ignored), largest first.
    ///
    /// # Errors
    ///
    /// As [`DeadLetters::list`].
    pub async fn stats(&self, filter: &Filter, progress: Progress<'_>) -> Result<Vec<Group>, DeadError> {
        let all = Filter {
            limit: None,
            ..filter.clone()
        };
        Ok(groups(&self.list(&all, progress).await?))
    }

    /// Every parked message with this event id, whole (usually one; more
    /// after a duplicate).
    ///
    /// # Errors
    ///
    /// As [`DeadLetters::list`].
    pub async fn show(&self, event_id: &str, progress: Progress<'_>) -> Result<Vec<Record>, DeadError> {
        let mut v = ShowVisitor {
            event_id,
            found: Vec::new(),
        };
        self.each_queue(&Filter::default(), &mut v, &CancellationToken::new(), progress)
            .await?;
        Ok(v.found)
    }

    /// Sends the selected events back to this service's work queue of their
    /// type, each confirmed before it leaves `.dead`. Stops (settling what is
    /// in flight) when `stop` is cancelled. A failure mid-way is reported in
    /// [`ReplayReport::error`] with what was moved until then.
    ///
    /// # Errors
    ///
    /// [`DeadError::NoWorkQueue`] before anything moves, or a broker error
    /// before the first pass.
    pub async fn replay(
        &self,
        options: &ReplayOptions,
        stop: &CancellationToken,
        progress: Progress<'_>,
    ) -> Result<ReplayReport, DeadError> {
        let queues = self.selected(&options.filter)?;
        if !options.dry_run {
            for (event_type, dead) in &queues {
                let work = self.topology.work_queue(event_type);
                if rotate::count(&self.conn, &work).await?.is_none() {
                    return Err(DeadError::NoWorkQueue(dead.clone(), work));
                }
            }
        }
        let total = self.total(&queues).await?;
        let mut v = ReplayVisitor::new(options);
        let mut done = 0;
        for (event_type, dead) in queues {
            v.work_queue = self.topology.work_queue(&event_type);
            let pass = rotate::pass(&self.conn, &dead, &mut v, stop, &mut |n| progress(done + n, total)).await;
            v.report.failed += v.take_unfinished();
            match pass {
                Ok(p) => {
                    done += p.seen;
                    v.report.possible_duplicates += p.unsettled;
                }
                Err(e) => {
                    v.report.error = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(v.report)
    }

    /// Removes the selected events, each written to `export` (and committed)
    /// before it is acked away. A failure mid-way is reported in
    /// [`PurgeReport::error`] with what was removed until then.
    ///
    /// # Errors
    ///
    /// A broker error before the first pass.
    pub async fn purge(
        &self,
        filter: &Filter,
        export: &mut dyn ExportSink,
        stop: &CancellationToken,
        progress: Progress<'_>,
    ) -> Result<PurgeReport, DeadError> {
        let queues = self.selected(filter)?;
        let total = self.total(&queues).await?;
        let mut v = PurgeVisitor::new(filter, export);
        let mut done = 0;
        for (_, dead) in queues {
            match rotate::pass(&self.conn, &dead, &mut v, stop, &mut |n| progress(done + n, total)).await {
                Ok(p) => {
                    done += p.seen;
                    v.report.possible_duplicates += p.unsettled;
                }
                Err(e) => {
                    v.report.error = Some(e.to_string());
                    break;
                }
            }
            if let Some(e) = &v.failed {
                v.report.error = Some(format!("exporting: {e}"));
                break;
            }
        }
        Ok(v.report)
    }

    /// Publishes exported records back to their `.dead` queue, each
    /// confirmed. Every record is checked first: a bad one fails the import
    /// before anything is published.
    ///
    /// # Errors
    ///
    /// [`DeadError::ForeignQueue`], [`DeadError::BadRecord`] (nothing
    /// published), or a broker error (the records before it are published).
    pub async fn import(&self, records: &[Record]) -> Result<u64, DeadError> {
        let known: Vec<String> = self.queues(&Filter::default()).into_iter().map(|(_, q)| q).collect();
        let mut messages = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if !known.contains(&r.queue) {
                return Err(DeadError::ForeignQueue {
                    line: i + 1,
                    queue: r.queue.clone(),
                    service: self.topology.service.clone(),
                    known: known.join(", "),
                });
            }
            let (body, props) = r.to_message().map_err(|e| DeadError::BadRecord {
                line: i + 1,
                reason: e.to_string(),
            })?;
            messages.push((r.queue.as_str(), body, props));
        }
        rotate::publish_all(&self.conn, &messages).await
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

//! What `warren dead` prints: tables for people, summaries of replays and
//! purges. Every value a producer or the broker set goes through
//! [`terminal::text`] (or [`terminal::json`]), so it cannot act on the terminal.

use std::path::Path;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use warren::dead::{Group, Parked, PurgeReport, Record, ReplayReport};
use warren::event::headers;

use crate::terminal;

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The `list` table.
pub fn parked_table(found: &[Parked]) {
    println!(
        "{:<36}  {:<15}  {:>8}  {:<10}  {:>3}  {:<20}  {:<20}  {:>6}  ERROR",
        "EVENT_ID", "TYPE", "USER", "REASON", "TRY", "FIRST_FAILURE", "PARKED", "BYTES"
    );
    for p in found {
        println!(
            "{:<36}  {:<15}  {:>8}  {:<10}  {:>3}  {:<20}  {:<20}  {:>6}  {}",
            terminal::text(p.event_id.as_deref().unwrap_or("-")),
            terminal::text(p.event_type.as_deref().unwrap_or("-")),
            p.user_id.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            terminal::text(&p.reason),
            p.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            time(p.first_failure),
            time(p.dead_lettered_at),
            p.body_size,
            terminal::text(&cut(p.error.as_deref().unwrap_or("").lines().next().unwrap_or(""), 60)),
        );
    }
    eprintln!("{} parked events", found.len());
}

/// The `stats` table.
pub fn groups_table(groups: &[Group]) {
    println!(
        "{:<8}  {:>6}  {:<15}  {:<10}  {:<20}  {:<20}  ERROR_CLASS",
        "GROUP", "COUNT", "TYPE", "REASON", "OLDEST", "NEWEST"
    );
    for g in groups {
        println!(
            "{:<8}  {:>6}  {:<15}  {:<10}  {:<20}  {:<20}  {}",
            g.group,
            g.count,
            terminal::text(g.event_type.as_deref().unwrap_or("-")),
            terminal::text(&g.reason),
            time(g.oldest),
            time(g.newest),
            terminal::text(&cut(&g.error_class, 70)),
        );
    }
    let total: u64 = groups.iter().map(|g| g.count).sum();
    eprintln!(
        "{} groups, {total} parked events (replay one with: warren dead replay --group GROUP)",
        groups.len()
    );
}

/// One whole message for `show`: where it came from, then the record.
pub fn record(r: &Record) -> anyhow::Result<()> {
    let h = &r.headers;
    let s = |k: &str| terminal::text(h.get(k).and_then(|v| v.as_str()).unwrap_or("?")).into_owned();
    println!("queue:  {}", terminal::text(&r.queue));
    println!(
        "origin: published to exchange \"{}\" with routing key \"{}\"; parked by {} after {} attempts ({}: {})",
        s(headers::ORIGINAL_EXCHANGE),
        s(headers::ORIGINAL_ROUTING_KEY),
        s(headers::QUEUE),
        h.get(headers::ATTEMPTS)
            .map_or_else(|| "?".to_owned(), |a| terminal::text(&a.to_string()).into_owned()),
        s(headers::REASON),
        s(headers::ERROR),
    );
    println!("{}", terminal::json(serde_json::to_string_pretty(r)?));
    Ok(())
}

/// The summary of a replay; an error when something was left behind.
pub fn replay_summary(r: &ReplayReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", terminal::json(serde_json::to_string(r)?));
    } else if r.dry_run {
        parked_table(&r.moved);
        println!(
            "dry run: would move {}, skip {} over the replay cap",
            r.moved.len(),
            r.skipped_over_cap.len()
        );
    } else {
        println!(
            "moved {}, skipped over the cap {}, failed {}, possible duplicates {}",
            r.moved.len(),
            r.skipped_over_cap.len(),
            r.failed,
            r.possible_duplicates
        );
    }
    if !json {
        for p in &r.skipped_over_cap {
            eprintln!(
                "skipped {} ({} replays already; raise --max-replays to send it again)",
                terminal::text(p.event_id.as_deref().unwrap_or("(no event_id)")),
                p.replays
            );
        }
    }
    if let Some(e) = &r.error {
        bail!("replay stopped: {e} (what is not moved is still parked; run it again)");
    }
    Ok(())
}

/// The summary of a purge; an error when it stopped early.
pub fn purge_summary(r: &PurgeReport, export: Option<&Path>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", terminal::json(serde_json::to_string(r)?));
    } else {
        let to = export.map_or_else(String::new, |p| format!(" (exported to {})", p.display()));
        println!(
            "purged {}{to}, possible duplicates {}",
            r.purged.len(),
            r.possible_duplicates
        );
    }
    if let Some(e) = &r.error {
        bail!("purge stopped: {e} (what is not purged is still parked)");
    }
    Ok(())
}

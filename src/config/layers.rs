//! The layers as entries: every value the user set, with where they set it
//! (a key of the settings file, a `.env` or environment variable, an alias),
//! and the warnings about `WARREN_*` variables that name no setting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::errors::{nearest, quote};
use super::values::{Raw, normalize};
use super::{ALIASES, ConfigError, Origin, Settings, Sources};

/// One value the user set.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The setting (`consumer.prefetch`).
    pub(super) key: String,
    pub(super) origin: Origin,
    pub(super) value: Raw,
}

/// The largest settings or `.env` file read: far more than any real one,
/// small enough that a wrong path (a log, a disk image) is refused at once.
pub(super) const MAX_FILE: u64 = 1024 * 1024;

/// The settings file's path and text: `--config PATH` (which must exist),
/// else `warren.toml` in the directory when it is there.
pub(super) fn read_file(sources: &Sources) -> Result<Option<(PathBuf, String)>, ConfigError> {
    let error = |path: &Path, message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let path = match &sources.file {
        Some(path) if !path.exists() => return Err(error(path, "not found".into())),
        Some(path) if path.extension().is_none_or(|e| e != "toml") => {
            return Err(error(path, "settings files are TOML: name it *.toml".into()));
        }
        Some(path) => path.clone(),
        None => sources.dir.join("warren.toml"),
    };
    if sources.file.is_none() && !path.exists() {
        return Ok(None);
    }
    let text = read_small(&path).map_err(|e| error(&path, e))?;
    Ok(Some((path, text)))
}

/// The text of a regular file of at most [`MAX_FILE`] bytes. A device
/// (`/dev/zero`), a FIFO or a directory is refused before it is opened:
/// reading one would never end, or block until a writer comes.
///
/// # Errors
///
/// What the file is instead, its size, or the I/O error.
pub(super) fn read_small(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "a device, FIFO or socket"
        };
        return Err(format!("not a regular file ({what})"));
    }
    let too_big = || format!("larger than {} KiB: is this the right file?", MAX_FILE / 1024);
    if meta.len() > MAX_FILE {
        return Err(too_big());
    }
    let mut text = String::new();
    // Capped again while reading: the file may grow after the check.
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(too_big());
    }
    Ok(text)
}

/// The file's values, one entry per setting.
///
/// # Errors
///
/// A TOML syntax error (by line and column, without quoting the line: it
/// may hold a password), or a key that names no setting.
pub(super) fn file_entries(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let error = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        error(format!(
            "TOML syntax error at line {line}, column {column}: {}",
            e.message()
        ))
    })?;
    let keys = Settings::keys();
    let sections: BTreeSet<String> = keys
        .iter()
        .flat_map(|k| k.match_indices('.').map(|(i, _)| k[..i].to_owned()).collect::<Vec<_>>())
        .collect();
    let mut out = Vec::new();
    flatten(path, "", &table, (&keys, &sections), &mut out).map_err(error)?;
    Ok(out)
}

fn flatten(
    path: &Path,
    prefix: &str,
    table: &toml::Table,
    (keys, sections): (&BTreeSet<String>, &BTreeSet<String>),
    out: &mut Vec<Entry>,
) -> Result<(), String> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if keys.contains(&key) {
            let origin = Origin::File {
                path: path.to_owned(),
                key: key.clone(),
            };
            out.push(Entry {
                key,
                origin,
                value: Raw::Toml(value.clone()),
            });
        } else if sections.contains(&key) {
            let toml::Value::Table(inner) = value else {
                return Err(format!("{key} must be a table ([{key}]), not a single value"));
            };
            flatten(path, &key, inner, (keys, sections), out)?;
        } else {
            let all = keys.iter().chain(sections).map(String::as_str);
            return Err(match nearest(&key, all) {
                Some(near) => format!("unknown key {}; did you mean {near}?", quote(&key)),
                None => format!("unknown key {}", quote(&key)),
            });
        }
    }
    Ok(())
}

/// The variables of a `.env` file; none when there is no file.
pub(super) fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let error = |message: String| ConfigError::DotEnv {
        path: path.display().to_string(),
        message,
    };
    let text = read_small(path).map_err(error)?;
    let err = |e: dotenvy::Error| {
        error(match e {
            dotenvy::Error::LineParse(line, at) => unparsable_line(&text, &line, at),
            other => other.to_string(),
        })
    };
    dotenvy::from_read_iter(text.as_bytes())
        .map(|r| r.map_err(err))
        .collect()
}

/// Where a `.env` line does not parse, by line number and variable name:
/// dotenvy's own message quotes the line, which may hold a password.
fn unparsable_line(text: &str, line: &str, at: usize) -> String {
    let first = line.lines().next().unwrap_or_default();
    let Some((number, whole)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !first.is_empty() && l.contains(first))
    else {
        return format!("a line does not parse (at character {at}; it is not shown: it may hold a secret)");
    };
    let name = whole.split('=').next().unwrap_or_default().trim();
    let name = name.strip_prefix("export ").unwrap_or(name).trim();
    let name = if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!(" ({})", quote(name))
    } else {
        String::new()
    };
    format!(
        "line {}{name} does not parse (at character {at}; the line is not shown: it may hold a secret)",
        number + 1
    )
}

/// The environment name of a setting: `WARREN_CONSUMER__RETRY__DELAYS`.
pub(super) fn variable_of(key: &str) -> String {
    format!("WARREN_{}", key.to_uppercase().replace('.', "__"))
}

/// The `WARREN_*` variables and aliases of `.env` and the environment (the
/// environment wins), one entry per setting: a `WARREN_*` variable wins over
/// its alias wherever each is set. Plus a warning for each `WARREN_*`
/// variable that names no setting, suggesting the nearest one that does.
pub(super) fn variables(
    dotenv_path: &Path,
    dotenv: &[(String, String)],
    env: &[(String, String)],
) -> (Vec<Entry>, Vec<String>) {
    let keys = Settings::keys();
    let origin = |in_dotenv: bool, variable: &str| {
        let variable = variable.to_owned();
        if in_dotenv {
            Origin::DotEnv {
                path: dotenv_path.to_owned(),
                variable,
            }
        } else {
            Origin::Environment { variable }
        }
    };
    let vars: Vec<(bool, &String, &String)> = dotenv
        .iter()
        .map(|(n, v)| (true, n, v))
        .chain(env.iter().map(|(n, v)| (false, n, v)))
        .collect();
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut warnings = Vec::new();
    for &(in_dotenv, name, value) in &vars {
        let Some(path) = name.strip_prefix("WARREN_") else {
            continue;
        };
        let key = path.to_lowercase().replace("__", ".");
        if keys.contains(&key) {
            let entry = Entry {
                origin: origin(in_dotenv, name),
                value: Raw::Text(normalize(&key, value)),
                key: key.clone(),
            };
            entries.insert(key, entry);
        } else if !warnings.iter().any(|w: &String| w.contains(&format!("{name} "))) {
            warnings.push(unknown_variable(name, in_dotenv.then_some(dotenv_path), &keys));
        }
    }
    for (alias, targets) in ALIASES {
        let Some(&(in_dotenv, name, value)) = vars.iter().rev().find(|(_, n, _)| n == alias) else {
            continue;
        };
        for target in *targets {
            entries.entry((*target).to_owned()).or_insert_with(|| Entry {
                key: (*target).to_owned(),
                origin: origin(in_dotenv, name),
                value: Raw::Text(normalize(target, value)),
            });
        }
    }
    if let Some(&(in_dotenv, name, value)) = vars.iter().rev().find(|(_, n, _)| *n == CELERY) {
        let place = origin(in_dotenv, name).to_string();
        let amqp_set = entries.contains_key("amqp.url");
        warnings.push(celery_notice(&place, value, amqp_set));
    }
    (entries.into_values().collect(), warnings)
}

/// Celery's broker setting, which the seed's `.env` holds.
const CELERY: &str = "CELERY_BROKER_URL";

/// What warren does with `CELERY_BROKER_URL` (nothing, but say so: an
/// operator moving from Celery may expect it to be picked up): a Redis URL
/// cannot serve, a RabbitMQ one could, as `AMQP_URL`. The URL is shown
/// without its password.
fn celery_notice(place: &str, url: &str, amqp_set: bool) -> String {
    let shown = quote(&crate::uri::redact_url(url.trim()));
    let scheme = url.trim().split_once("://").map_or("", |(s, _)| s).to_ascii_lowercase();
    let instead = if amqp_set {
        "warren connects to amqp.url as set"
    } else {
        "warren connects to the default amqp.url"
    };
    match scheme.as_str() {
        "redis" | "rediss" | "sentinel" => format!(
            "{place} ({shown}) is ignored: it names a Redis broker, and warren works with RabbitMQ only; {instead}"
        ),
        "amqp" | "amqps" | "pyamqp" | "librabbitmq" => format!(
            "{place} ({shown}) is ignored: {instead}. To use that RabbitMQ, set AMQP_URL to the same URL \
             (scheme amqp:// or amqps://, the vhost / written as %2f)"
        ),
        _ => format!("{place} ({shown}) is ignored: warren reads its broker from amqp.url (AMQP_URL)"),
    }
}

fn unknown_variable(name: &str, dotenv: Option<&Path>, keys: &BTreeSet<String>) -> String {
    let place = match dotenv {
        Some(path) => format!("{} in {}", quote(name), path.display()),
        None => format!("environment variable {}", quote(name)),
    };
    let names: Vec<String> = keys
        .iter()
        .map(|k| variable_of(k))
        .chain(ALIASES.iter().map(|(a, _)| (*a).to_owned()))
        .collect();
    match nearest(name, names.iter().map(String::as_str)) {
        Some(near) => format!("{place} matches no setting and is ignored; did you mean {near}?"),
        None => format!("{place} matches no setting and is ignored"),
    }
}

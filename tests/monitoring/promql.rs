//! The metric names a PromQL expression (or a Grafana `label_values(...)`
//! variable query) reads: what is left once strings, label matchers, range
//! selectors, grouping clauses, functions and keywords are taken out.

use std::collections::BTreeSet;

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Clauses whose parenthesised list names labels, not metrics.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Drops everything between `open` and its `close` (inclusive), outside strings.
fn drop_between(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

fn drop_strings(text: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

/// Identifiers with what follows each (skipping spaces).
fn identifiers(text: &str) -> Vec<(String, Option<char>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = c.is_ascii_alphabetic() || c == '_' || c == ':';
        let after_digit = i > 0 && (chars[i - 1].is_ascii_digit() || chars[i - 1] == '.');
        if starts && !after_digit {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().copied().find(|c| !c.is_whitespace());
            out.push((name, next));
        } else {
            i += 1;
        }
    }
    out
}

/// Drops `by (...)`, `without (...)`, `on (...)`, ... : their lists are labels.
fn drop_label_lists(text: &str) -> String {
    let mut out = text.to_owned();
    for kw in LABEL_LISTS {
        while let Some(at) = find_clause(&out, kw) {
            let open = at + out[at..].find('(').expect("a clause's list");
            let close = open + out[open..].find(')').expect("a closed list");
            out.replace_range(at..=close, " ");
        }
    }
    out
}

/// Where keyword `kw` starts a parenthesised clause (`by (le)`), as a whole word.
fn find_clause(text: &str, kw: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    text.match_indices(kw).map(|(i, _)| i).find(|&i| {
        let before = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = text[i + kw.len()..].trim_start();
        before && rest.starts_with('(')
    })
}

/// The metric names `query` reads.
pub(crate) fn metric_names(query: &str) -> BTreeSet<String> {
    // label_values(metric, label): only its first argument is a metric.
    if let Some(args) = query.trim().strip_prefix("label_values(") {
        let metric = args.split([',', ')', '{']).next().unwrap_or_default().trim();
        return BTreeSet::from([metric.to_owned()]);
    }
    let text = drop_strings(query);
    let text = drop_between(&text, '{', '}');
    let text = drop_between(&text, '[', ']');
    let text = drop_label_lists(&text);
    identifiers(&text)
        .into_iter()
        .filter(|(name, next)| *next != Some('(') && !KEYWORDS.contains(&name.as_str()))
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn metric_names_are_found_and_nothing_else() {
    let q = "histogram_quantile(0.99, sum by (le, queue) (rate(warren_handler_duration_seconds_bucket{instance=~\"$instance\"}[$__rate_interval])))";
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["warren_handler_duration_seconds_bucket".to_owned()])
    );
    let q = "a_total{queue=~`.+\\.dead`} > min_over_time(b{x=\"y\"}[10m]) and on (queue) c == 0 > 1e3";
    let names: Vec<String> = metric_names(q).into_iter().collect();
    assert_eq!(names, ["a_total", "b", "c"]);
    assert_eq!(
        metric_names("label_values(warren_build_info, instance)"),
        BTreeSet::from(["warren_build_info".to_owned()])
    );
}

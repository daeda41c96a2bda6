//! The nodes a connection may go to: the URIs of `amqp.url` in the order
//! chosen at start, and where the next (re)connect begins.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::uri;

/// The nodes of one connection's settings, shared by its reconnects.
/// `Debug` shows the URLs redacted.
pub(crate) struct Nodes {
    urls: Vec<String>,
    /// Index of the node the next attempt starts with.
    next: AtomicUsize,
}

impl Nodes {
    /// The URIs of `urls` (comma-separated), shuffled when `shuffle`, so
    /// that instances started with the same list spread over the cluster.
    pub(crate) fn new(urls: &str, shuffle: bool) -> Self {
        let mut urls: Vec<String> = uri::split_list(urls).into_iter().map(str::to_owned).collect();
        if shuffle {
            shuffle_in_place(&mut urls);
        }
        Self {
            urls,
            next: AtomicUsize::new(0),
        }
    }

    /// Every node once, starting with the one after the node last connected
    /// to: a reconnect goes elsewhere first, where the last node just failed.
    pub(crate) fn round(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.next.load(Ordering::Relaxed);
        let n = self.urls.len();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, self.urls[i].as_str())
        })
    }

    /// Records that node `index` took the connection.
    pub(crate) fn connected(&self, index: usize) {
        self.next.store((index + 1) % self.urls.len().max(1), Ordering::Relaxed);
    }

    /// How many nodes there are.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field(
                "urls",
                &self.urls.iter().map(|u| uri::redact_url(u)).collect::<Vec<_>>(),
            )
            .field("next", &self.next)
            .finish()
    }
}

/// A random order, so that instances do not all try the same node first.
fn shuffle_in_place(urls: &mut [String]) {
    use rand::seq::SliceRandom;
    urls.shuffle(&mut rand::rng());
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "amqp://h1,amqp://h2,amqp://h3";

    fn order(nodes: &Nodes) -> Vec<String> {
        nodes.round().map(|(_, u)| u.to_owned()).collect()
    }

    #[test]
    fn kept_in_order_each_reconnect_starts_after_the_last_node() {
        let nodes = Nodes::new(THREE, false);
        assert_eq!(order(&nodes), ["amqp://h1", "amqp://h2", "amqp://h3"]);
        nodes.connected(0);
        assert_eq!(order(&nodes), ["amqp://h2", "amqp://h3", "amqp://h1"]);
        nodes.connected(2);
        assert_eq!(order(&nodes), ["amqp://h1", "amqp://h2", "amqp://h3"]);
    }

    #[test]
    fn shuffled_orders_vary_and_keep_every_node() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let nodes = Nodes::new(THREE, true);
            let mut got = order(&nodes);
            seen.insert(got.join(","));
            got.sort();
            assert_eq!(got, ["amqp://h1", "amqp://h2", "amqp://h3"]);
        }
        assert!(seen.len() >= 4, "shuffling gave only {seen:?}");
    }

    #[test]
    fn one_node_is_always_that_node() {
        let nodes = Nodes::new("amqp://only", true);
        nodes.connected(0);
        assert_eq!(order(&nodes), ["amqp://only"]);
        assert_eq!(nodes.len(), 1);
    }
}

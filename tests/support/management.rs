//! The management HTTP API of a node (guest/guest), for what AMQP cannot
//! tell or do: which node leads a queue, closing a connection by force.

use std::io::{Read, Write};
use std::time::Duration;

/// One request to the management API on `port` (HTTP/1.0: no chunking to undo).
pub fn request(port: u16, method: &str, path: &str) -> (u16, String) {
    send(port, method, path, "")
}

/// [`request`] with a JSON body.
pub fn send(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("the management API on :{port} (rabbitmq_management): {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `s` as one path segment.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The broker's name of the connection whose client-given name contains
/// `name`, waiting for the management statistics (emitted every few seconds)
/// to list it.
pub async fn connection_named(port: u16, name: &str) -> String {
    for _ in 0..150 {
        let (status, body) = request(port, "GET", "/api/connections?columns=name,client_properties");
        assert_eq!(status, 200, "GET /api/connections: {body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("connections JSON");
        if let Some(c) = list.iter().find(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or("")
                .contains(name)
        }) {
            return c["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection named {name:?} appeared in the management API on :{port}");
}

/// Has the broker force-close a connection (as `rabbitmqctl close_connection`
/// does), through the management API, which answers in milliseconds.
pub fn force_close(port: u16, broker_name: &str) {
    let (status, body) = request(
        port,
        "DELETE",
        &format!("/api/connections/{}", percent_encode(broker_name)),
    );
    assert!(
        status == 204 || status == 200,
        "DELETE connection {broker_name}: {status} {body}"
    );
}

//! `--ingress URL`: publishing through warren's HTTP ingress
//! (`POST {URL}/events`, JSON envelope, answered 202 once the broker
//! confirmed) over a pool of keep-alive connections.

use std::time::Duration;

use super::BenchError;
use crate::event::{Envelope, UserRegistered};

/// An HTTP client for the ingress's `/events`.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:8080`) keeping up to
    /// `connections` idle connections open.
    ///
    /// # Errors
    ///
    /// [`BenchError::Ingress`] when the client cannot be built.
    pub fn new(base: &str, connections: usize) -> Result<Self, BenchError> {
        let tls = crate::webhook::tls_config().map_err(BenchError::Ingress)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Ingress(e.to_string()))?;
        Ok(Self {
            http,
            url: format!("{}/events", base.trim_end_matches('/')),
        })
    }

    /// Posts one event; `Ok` on 202.
    pub async fn post(&self, event: Envelope<UserRegistered>) -> Result<(), String> {
        let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = response.status();
        if status == reqwest::StatusCode::ACCEPTED {
            // Read the (small) body so the connection goes back to the pool.
            let _ = response.bytes().await;
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(format!(
                "POST {} answered {status}: {}",
                self.url,
                crate::event::truncate(&text, 200)
            ))
        }
    }
}

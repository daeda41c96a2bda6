//! `warren consume` with its probes: `/healthz`, `/readyz` (the consumer's
//! connection and each queue's consumer) and `/metrics` on `metrics.listen`,
//! as `warren run` and `warren ingress` serve them.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warren::Settings;
use warren::consumer::Consumer;
use warren::readiness::Readiness;

/// Runs `consumer` until `shutdown`, serving the probes on `metrics.listen`
/// when it is set. Either ending stops the other.
///
/// # Errors
///
/// The consumer's error, or the probes' listener's.
pub async fn consume(settings: &Settings, consumer: Consumer, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = warren::metrics::install()?;
    let readiness = Readiness::new();
    let consumer = consumer.with_readiness(readiness.clone());
    let Some(addr) = settings.metrics.listen else {
        tracing::info!("metrics.listen is not set: no /healthz, /readyz or /metrics");
        return Ok(consumer.run(shutdown).await?);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
    tracing::info!(listen = %addr, "probes and metrics listening");
    let stop = shutdown.clone();
    let consuming = async move {
        let result = consumer.run(stop.clone()).await;
        stop.cancel();
        result
    };
    let stop = shutdown.clone();
    let serving = async move {
        let result = warren::http::serve_probes(listener, readiness, handle, &settings.ingress, stop.clone()).await;
        stop.cancel();
        result
    };
    let (consumed, served) = tokio::join!(consuming, serving);
    consumed?;
    served?;
    Ok(())
}

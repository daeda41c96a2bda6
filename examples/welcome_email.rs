//! A consumer service with handlers of its own: a welcome e-mail for every
//! `user.registered`, and a login audit for `user.login`.
//!
//! The "mail server" fails now and then (transient: retried later through the
//! delay queues); a banned domain is a permanent failure (parked in `.dead`).
//!
//! ```sh
//! cargo run --example welcome_email            # Ctrl-C to stop
//! cargo run -- publish user.registered --data '{"user_id":7,"username":"ann","email":"ann@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}'
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, Context, Handler, HandlerError};
use warren::{Envelope, Settings, UserLogin, UserRegistered};

/// Sends the welcome e-mail. Every third send fails the first time, as a
/// flaky SMTP relay would.
struct WelcomeEmail {
    sent: Arc<AtomicU64>,
}

impl Handler<UserRegistered> for WelcomeEmail {
    async fn handle(&self, event: Envelope<UserRegistered>, ctx: Context) -> Result<(), HandlerError> {
        let user = &event.data;
        if user.email.ends_with("@spam.example") {
            return Err(HandlerError::permanent(format!(
                "refusing to mail banned domain of {}",
                user.email
            )));
        }
        if event.user_id % 3 == 0 && ctx.attempt == 1 {
            return Err(HandlerError::transient("SMTP relay answered 421: try again later"));
        }
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        println!(
            "[mail #{n}] Welcome, {}! (to {}, attempt {})",
            user.username, user.email, ctx.attempt
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warren=info").init();
    let mut settings = Settings::default();
    settings.consumer.service = "welcome-mailer".into();
    if let Ok(url) = std::env::var("AMQP_URL") {
        settings.amqp.url = url;
    }

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });

    Consumer::new(settings)
        .on(WelcomeEmail {
            sent: Arc::new(AtomicU64::new(0)),
        })
        .on(|event: Envelope<UserLogin>, _ctx: Context| async move {
            println!(
                "[audit] user {} signed in from {}",
                event.user_id, event.data.ip_address
            );
            Ok::<_, HandlerError>(())
        })
        .run(shutdown)
        .await?;
    Ok(())
}

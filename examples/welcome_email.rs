//! A consumer service with handlers of its own: a welcome e-mail for every
//! `user.registered`, and a login audit for `user.login`.
//!
//! The "mail server" fails now and then (transient: retried later through the
//! delay queues); a banned domain is a permanent failure (parked in `.dead`).
//!
//! It behaves like a service: settings load as for the `warren` command
//! (built-in defaults < `warren.toml` < `.env` in the working directory <
//! `WARREN_*` variables, with `AMQP_URL` and the other aliases), logs go to
//! stderr (`RUST_LOG`, default `warren=info,welcome_email=info`), the mails
//! go to stdout, and Ctrl-C or SIGTERM stops it after in-flight handlers
//! finish (a second signal exits at once).
//!
//! ```sh
//! cargo run --example welcome_email            # Ctrl-C or `kill -TERM` to stop
//! cargo run -- publish user.registered --data '{"user_id":7,"username":"ann","email":"ann@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}'
//! ```
//!
//! Its queues are those of consumer service `welcome-mailer`. That name
//! applies while `consumer.service` is warren's default, `warren` (sharing
//! warren's own queues would split the events between the two services);
//! any other value, e.g. `WARREN_CONSUMER__SERVICE=mailer-test`, is used as
//! it is.
//!
//! The queues stay on the broker after it stops, and keep receiving every
//! `user.registered` and `user.login` published to `user.events`. With the
//! default retry delays they are, for each of `user.registered` and
//! `user.login`: `welcome-mailer.<type>`, `welcome-mailer.<type>.retry.1s`,
//! `.retry.10s`, `.retry.1m` and `welcome-mailer.<type>.dead`. Remove them
//! (and the messages in them) on the broker's machine with:
//!
//! ```sh
//! rabbitmqctl -q list_queues name --no-table-headers | grep '^welcome-mailer\.' \
//!   | xargs -n1 rabbitmqctl -q delete_queue
//! ```
//!
//! (add `-p <vhost>` to both when `amqp.url` names another virtual host). The
//! exchange `user.events` is shared with every other service: leave it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warren::config::{Loaded, Sources};
use warren::consumer::{Consumer, Context, Handler, HandlerError};
use warren::{Envelope, Settings, UserLogin, UserRegistered};

/// This service's queue prefix, unless `consumer.service` is configured.
const SERVICE: &str = "welcome-mailer";

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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warren=info,welcome_email=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let settings = load_settings()?;
    // Cancelled by the first Ctrl-C or SIGTERM; a second one exits at once.
    let shutdown = warren::shutdown::on_signal()?;

    let consumer = Consumer::new(settings)
        .on(WelcomeEmail {
            sent: Arc::new(AtomicU64::new(0)),
        })
        .on(|event: Envelope<UserLogin>, _ctx: Context| async move {
            println!(
                "[audit] user {} signed in from {}",
                event.user_id, event.data.ip_address
            );
            Ok::<_, HandlerError>(())
        });
    let topology = consumer.topology();
    let queues: Vec<String> = topology.queues().into_iter().map(|q| q.name).collect();
    tracing::info!(service = %topology.service, queues = %queues.join(" "), "consuming");

    consumer.run(shutdown).await?;
    tracing::info!(
        "stopped; the queues of service {} stay on the broker (see this example's header to remove them)",
        topology.service
    );
    Ok(())
}

/// The settings, loaded as the `warren` command loads them (without its
/// `--config` option), with this service's name unless one was configured.
fn load_settings() -> Result<Settings, Box<dyn std::error::Error>> {
    let sources = Sources {
        file: None,
        dir: std::env::current_dir()?,
        env: std::env::vars().collect(),
    };
    let Loaded {
        mut settings, warnings, ..
    } = Settings::load(&sources)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    if settings.consumer.service == Settings::default().consumer.service {
        settings.consumer.service = SERVICE.into();
    }
    Ok(settings)
}

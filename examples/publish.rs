//! Publishing typed events from Rust, one at a time and as a batch.
//!
//! ```sh
//! cargo run -- topology apply      # so the events have queues to land in
//! cargo run --example publish
//! ```

use chrono::Utc;
use warren::{Envelope, Publisher, Settings, UserLogin, UserRegistered};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut settings = Settings::default();
    if let Ok(url) = std::env::var("AMQP_URL") {
        settings.amqp.url = url;
    }
    let publisher = Publisher::connect(&settings, "example publisher").await?;

    let registered = Envelope::new(
        "example",
        UserRegistered {
            user_id: 42,
            username: "zoe".into(),
            email: "zoe@example.com".into(),
            registration_timestamp: Utc::now(),
        },
    );
    publisher.publish(&registered).await?; // returns once RabbitMQ confirmed it
    println!("published {}", registered.event_id);

    let logins: Vec<_> = (0..10)
        .map(|i| {
            Envelope::new(
                "example",
                UserLogin {
                    user_id: 42,
                    username: "zoe".into(),
                    email: "zoe@example.com".into(),
                    login_timestamp: Utc::now(),
                    ip_address: format!("192.0.2.{i}").parse().expect("literal address"),
                },
            )
        })
        .collect();
    for (event, result) in logins.iter().zip(publisher.publish_batch(&logins).await) {
        match result {
            Ok(()) => println!("published {}", event.event_id),
            Err(e) => eprintln!("{}: {e}", event.event_id),
        }
    }
    Ok(())
}

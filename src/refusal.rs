//! What RabbitMQ refused, read from its errors: a permission on an exchange
//! or a queue (`ACCESS_REFUSED`), so that warren can say which permission
//! its user lacks on which object instead of "the broker is not reachable".

use std::fmt;

/// `ACCESS_REFUSED`, the reply code of a refused permission or login.
pub const ACCESS_REFUSED: u16 = 403;
/// `NOT_FOUND`: a passive declare of an object that does not exist.
pub const NOT_FOUND: u16 = 404;
/// `NOT_ALLOWED`: a missing vhost, or a user without access to it.
pub const NOT_ALLOWED: u16 = 530;

/// One of RabbitMQ's three permissions on an exchange or a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Declare (create) or delete it.
    Configure,
    /// Publish to an exchange; bind a queue.
    Write,
    /// Consume from a queue; bind from an exchange.
    Read,
}

impl Permission {
    /// The name `rabbitmqctl set_permissions` orders its regexes by.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [Permission::Configure, Permission::Write, Permission::Read]
            .into_iter()
            .find(|p| p.as_str() == word)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permission RabbitMQ refused to the user warren connects as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The permission that was missing; two when the broker does not say
    /// and the operation needs both on the object (a queue with a
    /// dead-letter exchange needs configure and read to be declared).
    pub permissions: Vec<Permission>,
    /// `exchange` or `queue`.
    pub kind: String,
    /// The object's name (`amq.default` for the default exchange).
    pub name: String,
    pub vhost: String,
    pub user: String,
}

impl Refusal {
    /// The refusal a broker error reports, if it is one.
    ///
    /// RabbitMQ 3.10 does not say which permission it checked ("access to
    /// exchange 'x' in vhost '/' refused for user 'u'"); later versions do
    /// ("write access to …"). When the text does not, `implied` names the
    /// permissions the operation needs on an object of the kind named
    /// (`exchange` or `queue`): a bind needs write on the queue and read on
    /// the exchange.
    #[must_use]
    pub fn from_error(e: &lapin::Error, implied: impl Fn(&str) -> &'static [Permission]) -> Option<Self> {
        let (code, text) = reply(e)?;
        if code != ACCESS_REFUSED {
            return None;
        }
        Self::parse(text, implied)
    }

    /// [`Refusal::from_error`] on the broker's reply text.
    #[must_use]
    pub fn parse(text: &str, implied: impl Fn(&str) -> &'static [Permission]) -> Option<Self> {
        let (head, rest) = text.split_once("access to ")?;
        let said = head.rsplit(' ').find(|w| !w.is_empty()).and_then(Permission::parse);
        let (kind, rest) = rest.split_once(" '")?;
        let (name, rest) = rest.split_once("' in vhost '")?;
        let (vhost, rest) = rest.split_once("' refused for user '")?;
        let user = rest.strip_suffix('\'').unwrap_or(rest);
        Some(Self {
            permissions: said.map_or_else(|| implied(kind).to_vec(), |p| vec![p]),
            kind: kind.to_owned(),
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            user: user.to_owned(),
        })
    }

    /// The permission refused, as `write` or `configure or read`.
    #[must_use]
    pub fn permission(&self) -> String {
        let names: Vec<&str> = self.permissions.iter().map(|p| p.as_str()).collect();
        names.join(" or ")
    }

    /// The object, as `exchange "user.events"`: what a response may name.
    #[must_use]
    pub fn object(&self) -> String {
        if self.kind == "exchange" && self.name == "amq.default" {
            // Retries and dead letters go through it, by name "".
            return "the default exchange (amq.default)".to_owned();
        }
        format!("{} {:?}", self.kind, self.name)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RabbitMQ refused user {:?} the {} permission on {} in vhost {:?} (see docs/PERMISSIONS.md)",
            self.user,
            self.permission(),
            self.object(),
            self.vhost
        )
    }
}

/// The reply code and text of a broker error (a channel or connection
/// close), if it is one.
#[must_use]
pub fn reply(e: &lapin::Error) -> Option<(u16, &str)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some((amqp.get_id(), amqp.get_message().as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_error(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a known reply code");
        lapin::ErrorKind::ProtocolError(amqp).into()
    }

    #[test]
    fn a_3_10_refusal_takes_the_permission_the_operation_implies() {
        let e = broker_error(
            403,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'prod' refused for user 'mailer'",
        );
        let r = Refusal::from_error(&e, |_| &[Permission::Write]).unwrap();
        assert_eq!(r.permissions, [Permission::Write]);
        assert_eq!((r.kind.as_str(), r.name.as_str()), ("exchange", "amq.default"));
        assert_eq!((r.vhost.as_str(), r.user.as_str()), ("prod", "mailer"));
        let shown = r.to_string();
        assert!(
            shown.contains("\"mailer\" the write permission on the default exchange (amq.default)"),
            "{shown}"
        );
    }

    #[test]
    fn a_refusal_that_names_its_permission_wins_over_the_implied_one() {
        let text = "ACCESS_REFUSED - configure access to queue 's.user.login' in vhost '/' refused for user 'u'";
        let r = Refusal::parse(text, |_| &[Permission::Configure, Permission::Read]).unwrap();
        assert_eq!(r.permissions, [Permission::Configure]);
        assert_eq!(r.object(), "queue \"s.user.login\"");
    }

    #[test]
    fn the_permissions_implied_depend_on_the_kind_of_object_refused() {
        let bind = |kind: &str| -> &'static [Permission] {
            if kind == "queue" {
                &[Permission::Write]
            } else {
                &[Permission::Read]
            }
        };
        let on = |kind: &str| format!("ACCESS_REFUSED - access to {kind} 'x' in vhost '/' refused for user 'u'");
        assert_eq!(
            Refusal::parse(&on("queue"), bind).unwrap().permissions,
            [Permission::Write]
        );
        assert_eq!(
            Refusal::parse(&on("exchange"), bind).unwrap().permissions,
            [Permission::Read]
        );
        let either = Refusal::parse(&on("queue"), |_| &[Permission::Configure, Permission::Read]).unwrap();
        assert!(
            either.to_string().contains("the configure or read permission on queue"),
            "{either}"
        );
    }

    #[test]
    fn other_errors_are_not_refusals() {
        let login = broker_error(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        assert_eq!(Refusal::from_error(&login, |_| &[Permission::Write]), None);
        let missing = broker_error(404, "NOT_FOUND - no exchange 'x' in vhost '/'");
        assert_eq!(Refusal::from_error(&missing, |_| &[Permission::Write]), None);
        assert_eq!(reply(&missing), Some((404, "NOT_FOUND - no exchange 'x' in vhost '/'")));
    }
}

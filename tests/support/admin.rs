//! Broker users and vhosts of a test's own, made through the management API
//! and deleted again when dropped (also when the test fails).

/// One request to the management API of the broker at 5672, as guest.
pub fn api(method: &str, path: &str, body: &str) -> (u16, String) {
    super::management::send(15672, method, path, body)
}

fn ok(what: &str, (status, body): (u16, String)) {
    assert!((200..300).contains(&status), "{what}: {status} {body}");
}

/// A name as a regex that matches it alone (`rabbitmqctl set_permissions`).
pub fn exactly(name: &str) -> String {
    format!("^{}$", escape(name))
}

/// A name with the regex metacharacters it may hold escaped.
pub fn escape(name: &str) -> String {
    name.replace('.', "\\.")
}

/// A JSON string literal.
fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A vhost of the test's own, where guest may do everything.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create(prefix: &str) -> Self {
        let name = super::unique(prefix);
        ok("create vhost", api("PUT", &format!("/api/vhosts/{name}"), ""));
        let all = r#"{"configure":".*","write":".*","read":".*"}"#;
        ok(
            "grant guest",
            api("PUT", &format!("/api/permissions/{name}/guest"), all),
        );
        Self { name }
    }

    /// The AMQP URL of `user` (with `password`) on this vhost.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = api("DELETE", &format!("/api/vhosts/{}", self.name), "");
    }
}

/// A broker user of the test's own, without permissions until granted.
pub struct User {
    pub name: String,
    pub password: String,
}

impl User {
    pub fn create(prefix: &str) -> Self {
        let user = Self {
            name: super::unique(prefix),
            password: super::unique("pw"),
        };
        user.set_password(&user.password.clone());
        user
    }

    /// Changes the password (connections already open stay open).
    pub fn set_password(&self, password: &str) {
        let body = format!(r#"{{"password":{},"tags":""}}"#, json(password));
        ok("put user", api("PUT", &format!("/api/users/{}", self.name), &body));
    }

    /// Sets this user's permissions on `vhost` (regexes, as `rabbitmqctl
    /// set_permissions -p vhost user configure write read`).
    pub fn grant(&self, vhost: &Vhost, configure: &str, write: &str, read: &str) {
        let body = format!(
            r#"{{"configure":{},"write":{},"read":{}}}"#,
            json(configure),
            json(write),
            json(read)
        );
        let path = format!("/api/permissions/{}/{}", vhost.name, self.name);
        ok("set permissions", api("PUT", &path, &body));
    }

    /// This user's URL on `vhost`.
    pub fn url(&self, vhost: &Vhost) -> String {
        vhost.url(&self.name, &self.password)
    }

    /// Has the broker close every connection of this user.
    pub fn close_connections(&self) {
        let (status, body) = api("DELETE", &format!("/api/connections/username/{}", self.name), "");
        assert!(status < 300 || status == 404, "close connections: {status} {body}");
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = api("DELETE", &format!("/api/users/{}", self.name), "");
    }
}

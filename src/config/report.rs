//! What the config says about itself: the resolved config as TOML with
//! every secret replaced (`config check`, `config defaults`), written so
//! that it loads back as the same config, and the warnings about settings
//! that work but are unsafe.

use super::{secrets, Config, Secret, REDACTED};

impl Config {
    /// The clients whose secret is the built-in rehearsal one, which
    /// anyone who has read the source knows.
    pub fn builtin_secrets_in_use(&self) -> Vec<String> {
        self.oauth
            .clients
            .iter()
            .filter(|client| client.has_builtin_secret())
            .map(|client| client.client_id.clone())
            .collect()
    }

    /// Warnings `config check` prints: settings that work but are unsafe.
    pub fn warnings(&self) -> Vec<String> {
        /// Connections beyond one per session that a daemon may hold to one
        /// companion at once (deliveries, reconciliation, health checks).
        const PER_SOURCE_MARGIN: usize = 16;
        let mut warnings = Vec::new();
        let builtin = self.builtin_secrets_in_use();
        if !builtin.is_empty() {
            warnings.push(format!(
                "clients {} use the built-in rehearsal secrets, which anyone can read in heistd's source; \
                 give each a client_secret_file (or client_secret_env) before the companions listen beyond loopback",
                builtin.join(", ")
            ));
        }
        // Each session has at most one call in flight to a companion; the
        // outbox deliverer, reconciliation and health checks add a few.
        let needed = self.daemon.max_concurrent_sessions as usize + PER_SOURCE_MARGIN;
        if self.http.max_connections_per_ip < needed {
            warnings.push(format!(
                "http.max_connections_per_ip {} is below daemon.max_concurrent_sessions {} + {PER_SOURCE_MARGIN}: \
                 companions serving this daemon from one address would refuse its calls under load; raise it to at least {needed}",
                self.http.max_connections_per_ip, self.daemon.max_concurrent_sessions
            ));
        }
        if !secrets::is_loopback_address(&self.daemon.admin_address)
            && !self.daemon.reads_need_token()
        {
            warnings.push(format!(
                "daemon.admin_address {} is not loopback and daemon.read_requires_token is false: anyone who reaches it reads the sessions",
                self.daemon.admin_address
            ));
        }
        warnings
    }

    /// The resolved config as TOML with every secret replaced. It loads
    /// back as the same config, and a `[[schedule]]` or `[[oauth.clients]]`
    /// table appended to it still loads: an empty list of tables is left
    /// out (a `schedule = []` line would make an appended `[[schedule]]` a
    /// second definition), and said in a comment at the end.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for client in &mut shown.oauth.clients {
            // A secret read from a file or a variable shows where it comes
            // from; one written in the file shows as REDACTED, which a
            // config made from this output is refused for.
            let from_elsewhere =
                client.client_secret_file.is_some() || client.client_secret_env.is_some();
            client.client_secret = if from_elsewhere {
                Secret::default()
            } else {
                Secret::new(REDACTED)
            };
        }
        // The built-in clients are what no [[oauth.clients]] means: leave
        // them out, so the output loads back as the same config.
        let builtin_only = !self.oauth.clients.is_empty()
            && self.builtin_secrets_in_use().len() == self.oauth.clients.len();
        if builtin_only {
            shown.oauth.clients.clear();
        }
        let mut text = toml::to_string_pretty(&shown)
            .unwrap_or_else(|error| format!("# cannot render config: {error}\n"));
        if builtin_only {
            text.push_str(
                "\n# [[oauth.clients]]: none listed, so the built-in rehearsal clients (their secrets are in\n\
                 # heistd's source); list your own, each with client_secret_file or client_secret_env.\n",
            );
        }
        if self.schedule.is_empty() {
            text.push_str(
                "\n# [[schedule]]: none, so the daemon starts heists only when asked; append\n\
                 # [[schedule]] tables here (see docs/configuration.md).\n",
            );
        }
        text
    }
}

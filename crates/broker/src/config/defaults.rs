//! The value each key of `makelaar.toml` takes when it is left out, as a [`ConfigFile`]: what
//! the configuration reference and the example file show as defaults.

use super::{
    BridgeTable, ClusterTable, Config, ConfigFile, CorruptStorePolicy, DashboardTable, Durability,
    ListenerTable, LogFormat, DEFAULT_BATCH_MS,
};

impl ConfigFile {
    /// Every key at the value it takes when left out; `None` where there is no such single
    /// value (a file that is not set, `allow_anonymous`, which depends on other keys). Taken
    /// from [`Config::default`]; the tests check that this file gives that `Config`. A list
    /// of tables (`[[listener]]`) holds one table at its defaults, which documents its keys
    /// (left out, there is none).
    ///
    /// Written without `..`, so that a new key does not compile until its default is given
    /// here (`None` when it has none: the reference then says "not set").
    pub fn defaults() -> ConfigFile {
        let d = Config::default();
        ConfigFile {
            listen: Some(d.listeners.iter().map(|l| l.url.clone()).collect()),
            cert: None,
            key: None,
            cafile: None,
            require_certificate: Some(false),
            sys_interval: Some(d.sys_interval.as_secs()),
            in_memory: Some(d.in_memory),
            data_dir: Some(d.data_dir),
            durability: Some(durability_name(d.durability).to_string()),
            // Applies to "batch" only; with the default "sync" it must not be written.
            batch_max_delay_ms: Some(DEFAULT_BATCH_MS),
            on_corrupt_store: Some(d.on_corrupt_store.name().to_string()),
            deny_subscriptions: Some(d.deny_subscriptions),
            will_on_takeover: Some(will_on_takeover_name(d.will_on_takeover).to_string()),
            crlfile: None,
            use_identity_as_username: Some(false),
            allow_anonymous: None,
            password_file: None,
            acl_file: d.acl_file,
            log_level: None,
            log_format: Some(LogFormat::default()),
            listener: vec![ListenerTable::defaults()],
            limits: d.limits,
            dashboard: DashboardTable::defaults(),
            bridge: vec![BridgeTable::defaults()],
            cluster: ClusterTable::defaults(),
        }
    }
}

impl ListenerTable {
    /// Every key of a `[[listener]]` table at its default; `None` means it inherits the
    /// top-level setting (`url` has no default). Written without `..` for the same reason as
    /// [`ConfigFile::defaults`].
    pub fn defaults() -> ListenerTable {
        ListenerTable {
            url: String::new(),
            cert: None,
            key: None,
            cafile: None,
            crlfile: None,
            require_certificate: None,
            use_identity_as_username: None,
            allow_anonymous: None,
            password_file: None,
            max_connections: Some(0),
            proxy_protocol: Some(false),
            trusted_proxies: Some(Vec::new()),
        }
    }
}

/// The `will_on_takeover` value of a rule.
pub(crate) fn will_on_takeover_name(w: makelaar_core::broker::WillOnTakeover) -> &'static str {
    match w {
        makelaar_core::broker::WillOnTakeover::Spec => "spec",
        makelaar_core::broker::WillOnTakeover::Mosquitto => "mosquitto",
    }
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Sync => "sync",
        Durability::Batch { .. } => "batch",
    }
}

impl CorruptStorePolicy {
    /// The name used in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CorruptStorePolicy::Fail => "fail",
            CorruptStorePolicy::MoveAside => "move-aside",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults, written into a file, give the default configuration.
    #[test]
    fn defaults_give_the_default_config() {
        let mut file = ConfigFile::defaults();
        file.batch_max_delay_ms = None;
        file.listener.clear();
        file.bridge.clear();
        let text = toml::to_string(&file).unwrap();
        assert_eq!(
            Config::from_toml_str(&text, "defaults").unwrap(),
            Config::default(),
            "{text}"
        );
    }

    /// `batch_max_delay_ms` has the default it is documented with.
    #[test]
    fn batch_delay_default() {
        let file = ConfigFile {
            durability: Some("batch".to_string()),
            ..ConfigFile::default()
        };
        let config = file.into_config("test").unwrap();
        assert_eq!(
            config.durability,
            Durability::Batch {
                max_delay_ms: ConfigFile::defaults().batch_max_delay_ms.unwrap()
            }
        );
    }

    /// A `[[listener]]` table with every documented default is the same listener as one with
    /// only its URL, whatever the top level says.
    #[test]
    fn listener_defaults_change_nothing() {
        for top in ["", "password_file = \"p\"\nallow_anonymous = true\n"] {
            let url = "url = \"mqtt://127.0.0.1:1883\"\n";
            let bare = format!("{top}[[listener]]\n{url}");
            let full = ListenerTable {
                url: "mqtt://127.0.0.1:1883".to_string(),
                ..ListenerTable::defaults()
            };
            let full = format!("{top}[[listener]]\n{}", toml::to_string(&full).unwrap());
            assert_eq!(
                Config::from_toml_str(&bare, "bare").unwrap(),
                Config::from_toml_str(&full, "full").unwrap(),
                "{full}"
            );
        }
    }
}

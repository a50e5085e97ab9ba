//! Validation of a [`ConfigFile`] into the [`Config`] the broker runs with.

use std::path::PathBuf;
use std::time::Duration;

use makelaar_core::broker::WillOnTakeover;

use super::{
    listeners, Config, ConfigError, ConfigFile, CorruptStorePolicy, Durability, DEFAULT_BATCH_MS,
    DEFAULT_DATA_DIR, DEFAULT_SYS_INTERVAL_SECS,
};

impl ConfigFile {
    /// Validates the settings and builds the [`Config`]: listener URLs parsed and resolved,
    /// certificate settings attached to TLS listeners. `source_name` names
    /// where the settings came from in messages. Files are not opened here; certificates are
    /// loaded when the listener binds ([`crate::listener::Listener::bind`]).
    pub fn into_config(self, source_name: &str) -> Result<Config, ConfigError> {
        let listeners = listeners::build(&self, source_name)?;

        let durability = durability_from(
            source_name,
            self.durability.as_deref(),
            self.batch_max_delay_ms,
        )?;
        let on_corrupt_store = match self.on_corrupt_store.as_deref() {
            None | Some("fail") => CorruptStorePolicy::Fail,
            Some("move-aside") => CorruptStorePolicy::MoveAside,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: on_corrupt_store = \"{other}\" is not known; use \"fail\" \
                     or \"move-aside\""
                )))
            }
        };

        let deny_subscriptions = self.deny_subscriptions.unwrap_or_default();
        for filter in &deny_subscriptions {
            if let Err(e) = makelaar_proto::topic::validate_topic_filter(filter) {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: deny_subscriptions entry \"{filter}\" is not a valid topic \
                     filter ({e}); write it as a client would subscribe to it"
                )));
            }
        }

        let will_on_takeover = match self.will_on_takeover.as_deref() {
            None | Some("spec") => WillOnTakeover::Spec,
            Some("mosquitto") => WillOnTakeover::Mosquitto,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: will_on_takeover = \"{other}\" is not known; use \"spec\" \
                     (the default) or \"mosquitto\""
                )))
            }
        };

        let bridges = bridges_from(&self.bridge, source_name)?;
        let cluster = self.cluster.into_settings(source_name)?;

        Ok(Config {
            cluster,
            dashboard: self.dashboard.into(),
            deny_subscriptions,
            will_on_takeover,
            acl_file: self.acl_file,
            listeners,
            limits: self.limits,
            sys_interval: Duration::from_secs(
                self.sys_interval.unwrap_or(DEFAULT_SYS_INTERVAL_SECS),
            ),
            in_memory: self.in_memory.unwrap_or(false),
            durability,
            on_corrupt_store,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            bridges,
            source: None,
        })
    }
}

fn durability_from(
    source_name: &str,
    mode: Option<&str>,
    batch_ms: Option<u64>,
) -> Result<Durability, ConfigError> {
    match (mode, batch_ms) {
        (None | Some("sync"), None) => Ok(Durability::Sync),
        (Some("batch"), ms) => Ok(Durability::Batch {
            max_delay_ms: ms.unwrap_or(DEFAULT_BATCH_MS).max(1),
        }),
        (None | Some("sync"), Some(_)) => Err(ConfigError::Invalid(format!(
            "{source_name}: batch_max_delay_ms only applies to durability = \"batch\"; set \
             that too, or remove batch_max_delay_ms"
        ))),
        (Some(other), _) => Err(ConfigError::Invalid(format!(
            "{source_name}: durability = \"{other}\" is not known; use \"sync\" (the default) \
             or \"batch\""
        ))),
    }
}

/// The `[[bridge]]` tables, validated: names and local client ids unique. The warnings
/// (`bridge_table::warnings`) are logged here, once per reading of the configuration.
fn bridges_from(
    tables: &[super::BridgeTable],
    source_name: &str,
) -> Result<Vec<super::BridgeConfig>, ConfigError> {
    let host = super::hostname();
    let mut out: Vec<super::BridgeConfig> = Vec::new();
    for t in tables {
        let b = t.to_bridge(&host).map_err(|e| {
            ConfigError::Invalid(format!("{source_name}: [[bridge]] \"{}\" {e}", t.name))
        })?;
        if out.iter().any(|o| o.name == b.name) {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: two [[bridge]] tables are named \"{}\"; give each bridge a \
                 name of its own",
                b.name
            )));
        }
        if let Some(o) = out.iter().find(|o| o.local_client_id == b.local_client_id) {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: [[bridge]] \"{}\" has the local client id \"{}\" of bridge \
                 \"{}\"; give one of them another local_client_id (or remote_client_id)",
                b.name, b.local_client_id, o.name
            )));
        }
        for w in super::bridge_warnings(&b) {
            tracing::warn!("{source_name}: {w}");
        }
        out.push(b);
    }
    Ok(out)
}

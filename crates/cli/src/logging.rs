//! Logging to stderr through tracing-subscriber.

use std::io::IsTerminal;

use makelaar_broker::listener::STATUS_TARGET;
use tracing_subscriber::EnvFilter;

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Quiet by default: warnings and errors, plus the broker's status lines (one per listener at
/// startup). `--log-level` wins over `RUST_LOG`; both take a level or filter directives.
pub fn init(log_level: Option<&str>) -> anyhow::Result<()> {
    let filter = match log_level {
        Some(spec) => parse(spec).map_err(|()| {
            anyhow::anyhow!(
                "--log-level \"{spec}\" is neither a level nor a filter; use error, warn, info, \
                 debug or trace"
            )
        })?,
        None => match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.trim().is_empty() => parse(&spec).map_err(|()| {
                anyhow::anyhow!(
                    "RUST_LOG=\"{spec}\" is neither a level nor a filter; use error, warn, info, \
                     debug or trace, or unset it"
                )
            })?,
            _ => default_filter(),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn default_filter() -> EnvFilter {
    EnvFilter::new(format!("warn,{STATUS_TARGET}=info"))
}

/// A bare level applies to Makelaar's own crates (other crates stay at warn, or lower);
/// anything else is taken as tracing filter directives.
fn parse(spec: &str) -> Result<EnvFilter, ()> {
    let spec = spec.trim();
    let lower = spec.to_ascii_lowercase();
    if LEVELS.contains(&lower.as_str()) {
        let directives = match lower.as_str() {
            "off" | "error" => lower,
            // Status lines stay visible at warn, as by default.
            "warn" => format!("warn,{STATUS_TARGET}=info"),
            level => format!("warn,makelaar={level}"),
        };
        return EnvFilter::try_new(directives).map_err(|_| ());
    }
    if spec.contains('=') || spec.contains(',') || spec.contains("::") {
        return EnvFilter::try_new(spec).map_err(|_| ());
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        assert!(parse("info").is_ok());
        assert!(parse("DEBUG").is_ok());
        assert!(parse("warn,makelaar_broker=trace").is_ok());
        assert!(parse("loud").is_err());
    }
}

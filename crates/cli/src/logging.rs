//! Logging to stderr through tracing-subscriber.

use std::io::IsTerminal;

use makelaar_broker::config::LogFormat;
use makelaar_broker::listener::STATUS_TARGET;
use tracing_subscriber::EnvFilter;

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Quiet by default: warnings and errors, plus the broker's status lines (one per listener at
/// startup). `--log-level` (`flag`) wins over `RUST_LOG`, which wins over `log_level` in the
/// config file (`file`: the setting and the file's name); each takes a level or filter
/// directives. `format` says how lines are written.
pub fn init(
    flag: Option<&str>,
    file: Option<(&str, &str)>,
    format: LogFormat,
) -> anyhow::Result<()> {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty());
    let chosen = match (flag, env.as_deref(), file) {
        (Some(spec), _, _) => Some((spec, "--log-level ".to_string(), "")),
        (None, Some(spec), _) => Some((spec, "RUST_LOG=".to_string(), ", or unset it")),
        (None, None, Some((spec, path))) => Some((spec, format!("{path}: log_level = "), "")),
        (None, None, None) => None,
    };
    let filter = match chosen {
        Some((spec, origin, fix)) => parse(spec).map_err(|()| {
            anyhow::anyhow!(
                "{origin}\"{spec}\" is neither a level nor a filter; use error, warn, info, \
                 debug or trace{fix}"
            )
        })?,
        None => default_filter(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        // One object per line: {"timestamp", "level", "fields": {"message", ...}, "target"}.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        // Colours only on a terminal, not in journald or a log file.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
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

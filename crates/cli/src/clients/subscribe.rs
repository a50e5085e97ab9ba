//! `makelaar sub`: subscribe and print what arrives, like mosquitto_sub.

use std::time::Duration;

use clap::Parser;
use makelaar_client::{
    Client, Message, ProtocolVersion, QoS, ReasonCode, Reconnect, SubscriptionOptions,
};

use super::args::{parse_qos, ConnArgs};
use super::format::{Output, Printer};
use super::{write_stdout, Failure, EXIT_TIMEOUT};

const EXAMPLES: &str = "\
Examples:
  makelaar sub -t 'sensors/#' -v
      Print 'topic payload' for everything under sensors/ (broker on localhost:1883).

  makelaar sub -h broker.example -t a -t b -q 1 -C 10
      Two topics at QoS 1; exit after 10 messages.

  makelaar sub -t 'sensors/#' -T sensors/debug/# -R
      Leave out sensors/debug/... and retained (stale) messages.

  makelaar sub -t 'status/#' -W 5 -F '%I %t %p'
      Timestamp, topic and payload; give up after 5 seconds (exit status 27).

  makelaar sub -t 'cmd/#' -V 5 --json
      One JSON object per message: topic, qos, retain, properties, payload (base64 when it
      is not UTF-8).

  makelaar sub -t '#' --remove-retained --retained-only -W 2
      Clear every retained message the broker holds (when allowed to).

  makelaar sub -c -i worker-1 -q 1 -t jobs -E
      Create a persistent session subscribed to 'jobs', then exit.

Exit status: 0 on success, 27 when -W timed out, the CONNACK code when the broker refuses the
connection, 1 for any other error.";

/// Subscribe to topics and print the messages (the flags of mosquitto_sub).
#[derive(Debug, Parser)]
#[command(
    name = "makelaar sub",
    bin_name = "makelaar sub",
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = EXAMPLES
)]
pub struct SubArgs {
    /// Topic filter to subscribe to; repeat for more.
    #[arg(short = 't', long = "topic", value_name = "FILTER")]
    pub topics: Vec<String>,

    /// Do not print messages whose topic matches this filter; repeat for more.
    #[arg(short = 'T', long = "filter-out", value_name = "FILTER")]
    pub filter_out: Vec<String>,

    /// QoS of the subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub qos: QoS,

    /// Print 'topic payload' instead of the payload alone.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// Exit after printing this many messages.
    #[arg(short = 'C', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,

    /// Exit (with status 27) when this many seconds have passed since connecting.
    #[arg(short = 'W', long = "timeout", value_name = "SECS")]
    pub timeout: Option<u64>,

    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-retained")]
    pub no_retained: bool,

    /// Print no newline after each message.
    #[arg(short = 'N', long = "no-eol")]
    pub no_eol: bool,

    /// Output format: %t topic, %p payload, %q QoS, %r retain, %l length, %m packet id, %x hex
    /// payload, %I ISO time, %U Unix time, %j JSON, %C %D %E %F %P %R %S %A v5 properties,
    /// @Y @m @d @H @M @S time (UTC), \n \t \e escapes.
    #[arg(short = 'F', long = "format", value_name = "FORMAT")]
    pub format: Option<String>,

    /// Print each message as one JSON object.
    #[arg(long, conflicts_with_all = ["format", "verbose"])]
    pub json: bool,

    /// Unsubscribe from this filter (after subscribing to -t); repeat for more.
    #[arg(short = 'U', long = "unsubscribe", value_name = "FILTER")]
    pub unsubscribe: Vec<String>,

    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E')]
    pub exit_after_subscribe: bool,

    /// Print only retained messages; exit at the first message that is not retained.
    #[arg(long)]
    pub retained_only: bool,

    /// Clear every retained message received (publish an empty retained message to its topic).
    #[arg(long)]
    pub remove_retained: bool,

    /// Subscribe with "retain as published" (MQTT 5).
    #[arg(long)]
    pub retain_as_published: bool,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Whether `topic` matches `filter` (+ one level, # the rest; $ topics only by name).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub fn printer(format: &Option<String>, verbose: bool, json: bool, no_eol: bool) -> Printer {
    let output = match (format, json) {
        (_, true) => Output::Json,
        (Some(f), false) => Output::Format(f.clone()),
        (None, false) if verbose => Output::Verbose,
        (None, false) => Output::Payload,
    };
    Printer {
        output,
        newline: !no_eol,
    }
}

/// Mosquitto's tools keep going when the connection drops; so do we.
pub fn reconnect() -> Reconnect {
    Reconnect::new(Duration::from_secs(1), Duration::from_secs(30))
}

pub async fn run(a: SubArgs) -> Result<(), Failure> {
    let setup = a
        .conn
        .setup(
            ProtocolVersion::V311,
            &["connect", "subscribe", "unsubscribe", "disconnect", "will"],
        )
        .map_err(Failure::usage)?;
    let mut topics = a.topics.clone();
    if let Some(t) = &setup.url_topic {
        topics.insert(0, t.clone());
    }
    if topics.is_empty() && a.unsubscribe.is_empty() {
        return Err(Failure::usage(
            "no topic to subscribe to: give one with -t FILTER",
        ));
    }
    if a.retain_as_published && !setup.opts.version.is_v5() {
        return Err(Failure::usage("--retain-as-published needs MQTT 5 (-V 5)"));
    }
    if a.count == Some(0) {
        return Err(Failure::usage("-C must be at least 1"));
    }
    let printer = printer(&a.format, a.verbose, a.json, a.no_eol);
    let opts = setup.opts.clone().reconnect(reconnect());
    let (client, mut msgs) = Client::connect(opts.clone())
        .await
        .map_err(|e| Failure::client(&e, &opts))?;
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));

    let result = async {
        if !topics.is_empty() {
            let options = SubscriptionOptions {
                qos: a.qos,
                retain_as_published: a.retain_as_published,
                ..SubscriptionOptions::default()
            };
            let filters = topics.iter().map(|t| (t.clone(), options)).collect();
            let ack = client
                .subscribe_many(filters, setup.props.subscribe.clone())
                .await
                .map_err(|e| Failure::client(&e, &opts))?;
            let mut refused = 0;
            for (t, r) in topics.iter().zip(ack.reasons.iter()) {
                if r.is_error() {
                    refused += 1;
                    if !a.conn.quiet {
                        eprintln!(
                            "makelaar sub: subscription to {t} refused by the broker: {}",
                            r.name()
                        );
                    }
                }
            }
            if refused == topics.len() {
                return Err(Failure::runtime(
                    "every subscription was refused by the broker",
                    1,
                ));
            }
        }
        if !a.unsubscribe.is_empty() {
            client
                .unsubscribe_many(a.unsubscribe.clone(), setup.props.unsubscribe.clone())
                .await
                .map_err(|e| Failure::client(&e, &opts))?;
        }
        if a.exit_after_subscribe || topics.is_empty() {
            return Ok(());
        }
        let mut printed = 0u64;
        loop {
            let m: Message = tokio::select! {
                m = msgs.recv() => match m {
                    Some(m) => m,
                    None => {
                        return match msgs.error() {
                            Some(e) => Err(Failure::client(&e, &opts)),
                            None => Ok(()),
                        }
                    }
                },
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    return Err(Failure::runtime(
                        format!("timed out: no more messages within {} s", a.timeout.unwrap_or(0)),
                        EXIT_TIMEOUT,
                    ));
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            if a.filter_out.iter().any(|f| matches(f, &m.topic)) {
                continue;
            }
            if a.remove_retained && m.retain {
                let clear = Message::new(m.topic.clone(), bytes::Bytes::new())
                    .with_qos(QoS::AtLeastOnce)
                    .with_retain(true);
                client
                    .publish_nowait(clear)
                    .await
                    .map_err(|e| Failure::client(&e, &opts))?;
            }
            if a.retained_only && !m.retain {
                return Ok(());
            }
            if a.no_retained && m.retain {
                continue;
            }
            write_stdout(&printer.render(&m))?;
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
    }
    .await;
    let _ = client
        .disconnect_with(ReasonCode::NORMAL_DISCONNECTION, setup.props.disconnect)
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn filters_match_topics() {
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("#", "x"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("+/+", "/x"));
    }
}

//! `makelaar rr`: send a request and print the response, like mosquitto_rr. In MQTT 5 the
//! request carries a Response Topic and Correlation Data, and only a response with the same
//! correlation data (or none) is taken.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use makelaar_client::{Client, Message, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

use super::args::{parse_qos, random_client_id, read_payload, ConnArgs};
use super::subscribe::{printer, reconnect};
use super::{write_stdout, Failure, EXIT_TIMEOUT};

const EXAMPLES: &str = "\
Examples:
  makelaar rr -t service/time -e replies/me -m now
      Ask on service/time, wait for the answer on replies/me, print it (MQTT 5).

  makelaar rr -t calc/add -e calc/reply/42 -m '1 2' -W 5 -v
      Give up after 5 s (exit status 27); print 'topic payload'.

  makelaar rr -t svc -e svc/reply -m ping -D publish correlation-data id-7
      Choose the correlation data yourself (otherwise a random one is sent).

  makelaar rr -V 311 -t svc -e svc/reply -m ping
      MQTT 3.1.1: no response topic property; the first message on -e is the answer.

Exit status: 0 when a response was printed, 27 when -W timed out, the CONNACK code when the
broker refuses the connection, 1 for any other error.";

/// Publish a request and wait for its response (the flags of mosquitto_rr).
#[derive(Debug, Parser)]
#[command(
    name = "makelaar rr",
    bin_name = "makelaar rr",
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = EXAMPLES
)]
pub struct RrArgs {
    /// Topic to send the request to.
    #[arg(short = 't', long = "topic", value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Response topic: subscribed to, and named in the request.
    #[arg(short = 'e', long = "response-topic", value_name = "TOPIC")]
    pub response_topic: Option<String>,

    /// Request payload.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    pub message: Option<String>,

    /// Send the contents of a file as the request.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Read standard input to its end and send it as the request.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin: bool,

    /// Send an empty request.
    #[arg(short = 'n', long = "null-message")]
    pub null: bool,

    /// QoS of the request and of the response subscription.
    #[arg(short = 'q', long = "qos", value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub qos: QoS,

    /// Ignore retained (stale) messages on the response topic.
    #[arg(short = 'R', long = "no-retained")]
    pub no_retained: bool,

    /// Print 'topic payload'.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// Print no newline after the response.
    #[arg(short = 'N', long = "no-eol")]
    pub no_eol: bool,

    /// Output format, as for makelaar sub -F.
    #[arg(short = 'F', long = "format", value_name = "FORMAT")]
    pub format: Option<String>,

    /// Print the response as one JSON object.
    #[arg(long, conflicts_with_all = ["format", "verbose"])]
    pub json: bool,

    /// Give up (exit status 27) after this many seconds without a response.
    #[arg(short = 'W', long = "timeout", value_name = "SECS")]
    pub timeout: Option<u64>,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl RrArgs {
    fn payload(&self) -> Result<Bytes, Failure> {
        let given = [
            self.message.is_some(),
            self.file.is_some(),
            self.stdin,
            self.null,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given == 0 {
            return Err(Failure::usage(
                "no request to send: give -m MESSAGE, -f FILE, -s or -n",
            ));
        }
        if given > 1 {
            return Err(Failure::usage("give only one of -m, -f, -s and -n"));
        }
        Ok(
            read_payload(self.message.as_deref(), self.file.as_deref(), self.stdin)?
                .unwrap_or_default(),
        )
    }
}

pub async fn run(a: RrArgs) -> Result<(), Failure> {
    let setup = a
        .conn
        .setup(
            ProtocolVersion::V5,
            &["connect", "publish", "subscribe", "disconnect", "will"],
        )
        .map_err(Failure::usage)?;
    let topic = match (&a.topic, &setup.url_topic) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "give the topic either with -t or in the -L URL, not both",
            ))
        }
        (Some(t), None) | (None, Some(t)) => t.clone(),
        (None, None) => return Err(Failure::usage("no request topic: give one with -t TOPIC")),
    };
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(Failure::usage(format!(
            "invalid topic '{topic}': a topic to publish to cannot contain + or #"
        )));
    }
    let Some(response_topic) = a.response_topic.clone() else {
        return Err(Failure::usage("no response topic: give one with -e TOPIC"));
    };
    if response_topic.is_empty() || response_topic.contains(['+', '#']) {
        return Err(Failure::usage(format!(
            "invalid response topic '{response_topic}': it cannot contain + or #"
        )));
    }
    let payload = a.payload()?;
    let v5 = setup.opts.version.is_v5();
    let mut properties = setup.props.publish.clone();
    let correlation = if v5 {
        properties.response_topic = Some(response_topic.clone());
        let c = properties
            .correlation_data
            .get_or_insert_with(|| Bytes::from(random_client_id().split_off(9)))
            .clone();
        Some(c)
    } else {
        None
    };
    let printer = printer(&a.format, a.verbose, a.json, a.no_eol);
    let opts = setup.opts.clone().reconnect(reconnect());
    let (client, mut msgs) = Client::connect(opts.clone())
        .await
        .map_err(|e| Failure::client(&e, &opts))?;
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));

    let result = async {
        let ack = client
            .subscribe_many(
                vec![(
                    response_topic.clone(),
                    SubscriptionOptions {
                        qos: a.qos,
                        ..SubscriptionOptions::default()
                    },
                )],
                setup.props.subscribe.clone(),
            )
            .await
            .map_err(|e| Failure::client(&e, &opts))?;
        if let Some(r) = ack.reasons.first().filter(|r| r.is_error()) {
            return Err(Failure::runtime(
                format!(
                    "subscription to the response topic {response_topic} refused by the broker: {}",
                    r.name()
                ),
                1,
            ));
        }
        let request = Message::new(topic.as_str(), payload)
            .with_qos(a.qos)
            .with_properties(properties);
        client
            .publish_message(request)
            .await
            .map_err(|e| Failure::client(&e, &opts))?;
        loop {
            let m: Message = tokio::select! {
                m = msgs.recv() => match m {
                    Some(m) => m,
                    None => {
                        return Err(match msgs.error() {
                            Some(e) => Failure::client(&e, &opts),
                            None => Failure::runtime("the connection ended before a response came", 1),
                        })
                    }
                },
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    return Err(Failure::runtime(
                        format!("timed out: no response within {} s", a.timeout.unwrap_or(0)),
                        EXIT_TIMEOUT,
                    ));
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            if a.no_retained && m.retain {
                continue;
            }
            // A response to someone else's request (other correlation data) is not ours.
            if let (Some(ours), Some(theirs)) = (&correlation, &m.properties.correlation_data) {
                if ours != theirs {
                    continue;
                }
            }
            write_stdout(&printer.render(&m))?;
            return Ok(());
        }
    }
    .await;
    let _ = client
        .disconnect_with(ReasonCode::NORMAL_DISCONNECTION, setup.props.disconnect)
        .await;
    result
}

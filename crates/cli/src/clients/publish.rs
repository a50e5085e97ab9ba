//! `makelaar pub`: publish a message (or one per line of standard input) and exit, like
//! mosquitto_pub.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use makelaar_client::{Client, Message, PendingPublish, ProtocolVersion, QoS, ReasonCode};

use super::args::{parse_qos, parse_seconds, read_payload, ConnArgs};
use super::Failure;

const EXAMPLES: &str = "\
Examples:
  makelaar pub -t sensors/kitchen/temp -m 21.5
      Publish one message to the broker on localhost:1883 (MQTT 3.1.1, QoS 0).

  makelaar pub -h broker.example -t status -m online -q 1 -r
      QoS 1, retained: new subscribers to 'status' get it at once.

  tail -f app.log | makelaar pub -t logs/app -l -q 1
      One message per line of standard input, until it ends.

  makelaar pub -V 5 -t cmd/lamp -m on -D publish content-type text/plain \\
               -D publish user-property origin cli -D publish message-expiry-interval 60
      MQTT 5 properties on the message.

  makelaar pub -L mqtts://alice:secret@broker.example:8883/alerts -m fire --cafile ca.pem
      Everything in one URL, over TLS verified against ca.pem.

  makelaar pub -t t -m x --will-topic clients/pub/state --will-payload gone -c -i pub-1
      A will and a persistent session (needs -i).

Exit status: 0 on success, the CONNACK code when the broker refuses the connection, 1 for
any other error.";

/// Publish a message to an MQTT broker and exit (the flags of mosquitto_pub).
#[derive(Debug, Parser)]
#[command(
    name = "makelaar pub",
    bin_name = "makelaar pub",
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = EXAMPLES
)]
pub struct PubArgs {
    /// Topic to publish to.
    #[arg(short = 't', long = "topic", value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Message payload.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    pub message: Option<String>,

    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Read standard input and send one message per line (without its newline).
    #[arg(short = 'l', long = "stdin-line")]
    pub lines: bool,

    /// Read standard input to its end and send it as one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin: bool,

    /// Send an empty (zero length) message; with -r it clears the retained message.
    #[arg(short = 'n', long = "null-message")]
    pub null: bool,

    /// QoS of the message: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub qos: QoS,

    /// Retain the message: the broker keeps it for future subscribers.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,

    /// Publish the message (-m, -f, -s, -n) this many times.
    #[arg(long = "repeat", value_name = "COUNT", default_value_t = 1)]
    pub repeat: u32,

    /// Seconds to wait between repeats (fractions allowed).
    #[arg(long = "repeat-delay", value_name = "SECS", value_parser = parse_seconds)]
    pub repeat_delay: Option<Duration>,

    /// Most QoS 1/2 messages in flight at once. [default: the broker's Receive Maximum with
    /// MQTT 5, 100 with 3.1.1]
    #[arg(short = 'M', long = "max-inflight", value_name = "COUNT")]
    pub max_inflight: Option<u16>,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

enum Source {
    Once(Bytes),
    Lines,
}

/// Checks a topic name to publish to.
fn check_topic(topic: &str) -> Result<(), Failure> {
    if topic.is_empty() {
        return Err(Failure::usage("the topic is empty"));
    }
    if topic.contains(['+', '#']) {
        return Err(Failure::usage(format!(
            "invalid topic '{topic}': a topic to publish to cannot contain + or #"
        )));
    }
    Ok(())
}

impl PubArgs {
    fn source(&self) -> Result<Source, Failure> {
        let given = [
            self.message.is_some(),
            self.file.is_some(),
            self.lines,
            self.stdin,
            self.null,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given == 0 {
            return Err(Failure::usage(
                "no message to send: give -m MESSAGE, -f FILE, -l, -s or -n",
            ));
        }
        if given > 1 {
            return Err(Failure::usage(
                "give only one of -m, -f, -l, -s and -n: one kind of message at a time",
            ));
        }
        if self.lines && (self.repeat != 1 || self.repeat_delay.is_some()) {
            return Err(Failure::usage("--repeat does not go with -l"));
        }
        if self.repeat == 0 {
            return Err(Failure::usage("--repeat must be at least 1"));
        }
        if let Some(data) = read_payload(self.message.as_deref(), self.file.as_deref(), self.stdin)?
        {
            return Ok(Source::Once(data));
        }
        if self.lines {
            return Ok(Source::Lines);
        }
        Ok(Source::Once(Bytes::new()))
    }
}

/// Publishes in order, keeping many in flight; remembers whether any was refused.
struct Publisher {
    client: Client,
    topic: Arc<str>,
    qos: QoS,
    retain: bool,
    properties: makelaar_client::Properties,
    /// With a topic alias, the first message sets it and later ones send an empty topic.
    alias_set: bool,
    pending: VecDeque<PendingPublish>,
    quiet: bool,
    refused: usize,
    opts: makelaar_client::ConnectOptions,
}

impl Publisher {
    async fn send(&mut self, payload: Bytes) -> Result<(), Failure> {
        let topic = if self.alias_set {
            Arc::from("")
        } else {
            self.topic.clone()
        };
        if self.properties.topic_alias.is_some() {
            self.alias_set = true;
        }
        let msg = Message::new(topic, payload)
            .with_qos(self.qos)
            .with_retain(self.retain)
            .with_properties(self.properties.clone());
        let p = self
            .client
            .start_publish(msg)
            .await
            .map_err(|e| Failure::client(&e, &self.opts))?;
        self.pending.push_back(p);
        // Forget the ones already answered.
        while let Some(front) = self.pending.front_mut() {
            match front.try_result() {
                None => break,
                Some(r) => {
                    self.pending.pop_front();
                    self.outcome(r)?;
                }
            }
        }
        Ok(())
    }

    fn outcome(
        &mut self,
        r: Result<makelaar_client::PublishAck, makelaar_client::Error>,
    ) -> Result<(), Failure> {
        match r {
            Ok(_) => Ok(()),
            Err(e @ makelaar_client::Error::PublishRefused { .. })
            | Err(e @ makelaar_client::Error::Invalid(_)) => {
                self.refused += 1;
                if !self.quiet {
                    eprintln!("makelaar pub: {}", super::capitalize(&e.to_string()));
                }
                Ok(())
            }
            Err(e) => Err(Failure::client(&e, &self.opts)),
        }
    }

    /// Waits for every acknowledgement.
    async fn finish(&mut self) -> Result<(), Failure> {
        while let Some(p) = self.pending.pop_front() {
            let r = p.acknowledged().await;
            self.outcome(r)?;
        }
        Ok(())
    }
}

pub async fn run(a: PubArgs) -> Result<(), Failure> {
    let setup = a
        .conn
        .setup(
            ProtocolVersion::V311,
            &["connect", "publish", "disconnect", "will"],
        )
        .map_err(Failure::usage)?;
    let topic = match (&a.topic, &setup.url_topic) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "give the topic either with -t or in the -L URL, not both",
            ))
        }
        (Some(t), None) | (None, Some(t)) => t.clone(),
        (None, None) => return Err(Failure::usage("no topic: give one with -t TOPIC")),
    };
    check_topic(&topic)?;
    let source = a.source()?;
    let mut opts = setup.opts;
    if let Some(m) = a.max_inflight {
        opts = opts.max_inflight(m.max(1));
    }
    let (client, _messages) = Client::connect(opts.clone())
        .await
        .map_err(|e| Failure::client(&e, &opts))?;
    let mut p = Publisher {
        client: client.clone(),
        topic: Arc::from(topic),
        qos: a.qos,
        retain: a.retain,
        properties: setup.props.publish.clone(),
        alias_set: false,
        pending: VecDeque::new(),
        quiet: a.conn.quiet,
        refused: 0,
        opts,
    };
    let result = async {
        match source {
            Source::Once(payload) => {
                for i in 0..a.repeat {
                    if i > 0 {
                        if let Some(d) = a.repeat_delay {
                            tokio::time::sleep(d).await;
                        }
                    }
                    p.send(payload.clone()).await?;
                }
            }
            Source::Lines => {
                // Standard input is read on a thread of its own (blocking reads), line by line.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(64);
                std::thread::spawn(move || {
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        let mut line = Vec::new();
                        match stdin.read_until(b'\n', &mut line) {
                            Ok(0) => return,
                            Ok(_) => {
                                if line.last() == Some(&b'\n') {
                                    line.pop();
                                }
                                if tx.blocking_send(Ok(line)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        }
                    }
                });
                while let Some(line) = rx.recv().await {
                    let line = line.map_err(|e| {
                        Failure::runtime(format!("cannot read standard input: {e}"), 1)
                    })?;
                    p.send(Bytes::from(line)).await?;
                }
            }
        }
        p.finish().await
    }
    .await;
    client
        .disconnect_with(ReasonCode::NORMAL_DISCONNECTION, setup.props.disconnect)
        .await
        .ok();
    result?;
    if p.refused > 0 {
        return Err(Failure {
            message: String::new(),
            code: 1,
            usage: false,
        });
    }
    Ok(())
}

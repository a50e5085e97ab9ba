//! An async MQTT 3.1.1 and 5.0 client on [`makelaar_proto`], for tokio.
//!
//! - TCP or TLS (rustls with the ring provider: a CA file or directory, a client certificate,
//!   an "insecure" mode that skips host name verification only);
//! - QoS 0, 1 and 2 both ways, with an inflight window that respects the broker's Receive
//!   Maximum; keep-alive; a will; 5.0 properties on every packet that has them;
//! - clean or persistent sessions, and optional automatic reconnection with backoff that
//!   resumes the session: unacknowledged QoS 1/2 messages are sent again with DUP set, and
//!   subscriptions are made again if the broker lost the session.
//!
//! [`Client::connect`] opens the connection (returning an [`Error`] when it is refused) and
//! starts one task that owns the socket. It hands back a [`Client`], a cheap handle to clone
//! into other tasks, and [`Messages`], the received messages in order.
//!
//! ```no_run
//! use makelaar_client::{Client, ConnectOptions, ProtocolVersion, QoS};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), makelaar_client::Error> {
//!     let opts = ConnectOptions::new("localhost", 1883)
//!         .version(ProtocolVersion::V5)
//!         .client_id("example");
//!     let (client, mut messages) = Client::connect(opts).await?;
//!
//!     client.subscribe("sensors/+/temperature", QoS::AtLeastOnce).await?;
//!     client.publish("sensors/kitchen/temperature", "21.5", QoS::AtLeastOnce, false).await?;
//!
//!     if let Some(msg) = messages.recv().await {
//!         println!("{}: {:?}", msg.topic, msg.payload_str());
//!     }
//!     client.disconnect().await
//! }
//! ```
//!
//! Dropping every [`Client`] handle closes the connection *without* DISCONNECT, as if the
//! program had died: the broker then publishes the will. Call [`Client::disconnect`] to end
//! cleanly.

mod driver;
mod error;
mod message;
mod options;
mod state;
mod tls;
mod transport;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use driver::ConnectionInfo;
pub use error::Error;
pub use makelaar_proto::{
    Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, SubscriptionOptions,
    UnsubAck, Will,
};
pub use message::{Message, PublishAck};
pub use options::{ConnectOptions, Reconnect, TlsOptions, DEFAULT_INFLIGHT_V3};
pub use state::ServerLimits;
pub use tls::{
    client_config as tls_config, client_config_with_verifier as tls_config_with_verifier,
    server_name as tls_server_name,
};
pub use transport::Stream;

use driver::{lock, Command, Shared};
use makelaar_proto::{Subscribe, Unsubscribe};
use state::State;

/// Requests waiting for the client's task before callers wait.
const COMMAND_QUEUE: usize = 64;

/// A handle to a connected client. Clone it freely: every clone talks to the same connection.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &*lock(&self.shared.info))
            .finish()
    }
}

/// The messages received from the broker, in order.
///
/// [`Messages::recv`] returns `None` once the client has ended; [`Messages::error`] then says
/// why (`None` after [`Client::disconnect`]). While nobody reads, the client buffers up to
/// [`ConnectOptions::message_buffer`] messages and then stops reading from the socket, so a
/// slow reader slows the broker down rather than filling memory. Dropping `Messages` discards
/// further messages (they are still acknowledged).
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
}

impl Messages {
    /// The next message; `None` when the client has ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Why the client ended, once [`Messages::recv`] returned `None`: the connection error,
    /// or `None` when the application disconnected.
    pub fn error(&self) -> Option<Error> {
        lock(&self.shared.end).clone()
    }
}

/// A publish handed to the client, whose acknowledgement can be awaited later: lets a
/// publisher keep several messages in flight.
#[derive(Debug)]
pub struct PendingPublish {
    rx: oneshot::Receiver<Result<PublishAck, Error>>,
    shared: Arc<Shared>,
}

impl PendingPublish {
    /// Waits for PUBACK (QoS 1), PUBCOMP (QoS 2), or the write to the socket (QoS 0).
    pub async fn acknowledged(self) -> Result<PublishAck, Error> {
        match self.rx.await {
            Ok(r) => r,
            Err(_) => Err(ended(&self.shared)),
        }
    }
}

impl PendingPublish {
    /// The outcome if it is known already, without waiting; `None` while the broker has not
    /// answered. After it returned `Some`, the outcome is gone: do not call
    /// [`PendingPublish::acknowledged`] too.
    pub fn try_result(&mut self) -> Option<Result<PublishAck, Error>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ended(&self.shared))),
        }
    }
}

fn ended(shared: &Shared) -> Error {
    lock(&shared.end).clone().unwrap_or(Error::Closed)
}

impl Client {
    /// Connects (TCP, TLS if configured, CONNECT, CONNACK) and starts the client's task.
    ///
    /// Fails with [`Error::ConnectionRefused`] when the broker refuses, and with the network
    /// or TLS error when it cannot be reached; a failure here is never retried, even with
    /// [`ConnectOptions::reconnect`].
    pub async fn connect(opts: ConnectOptions) -> Result<(Client, Messages), Error> {
        validate(&opts)?;
        let mut state = State::new(&opts, Instant::now());
        let (conn, ack) = driver::establish(&opts, &state, true).await?;
        state.on_connected(&ack, Instant::now());
        let shared = Arc::new(Shared {
            info: Mutex::new(ConnectionInfo::default()),
            end: Mutex::new(None),
        });
        driver::connected(&shared, &opts, &state, &ack);
        let (tx, cmds) = mpsc::channel(COMMAND_QUEUE);
        let (msg_tx, rx) = mpsc::channel(opts.message_buffer.max(1));
        tokio::spawn(driver::run(opts, state, conn, cmds, msg_tx, shared.clone()));
        Ok((
            Client {
                tx,
                shared: shared.clone(),
            },
            Messages { rx, shared },
        ))
    }

    async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.tx.send(cmd).await.map_err(|_| ended(&self.shared))
    }

    /// Publishes and waits for the acknowledgement: PUBACK for QoS 1, PUBCOMP for QoS 2, the
    /// write to the socket for QoS 0.
    pub async fn publish(
        &self,
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishAck, Error> {
        self.publish_message(
            Message::new(topic, payload)
                .with_qos(qos)
                .with_retain(retain),
        )
        .await
    }

    /// Publishes a message (with its 5.0 properties) and waits for the acknowledgement.
    pub async fn publish_message(&self, msg: Message) -> Result<PublishAck, Error> {
        self.start_publish(msg).await?.acknowledged().await
    }

    /// Hands a message to the client and returns as soon as it is queued; await
    /// [`PendingPublish::acknowledged`] for the broker's answer. Waits only when the client
    /// already holds many unsent messages (backpressure).
    pub async fn start_publish(&self, msg: Message) -> Result<PendingPublish, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            msg,
            reply: Some(reply),
        })
        .await?;
        Ok(PendingPublish {
            rx,
            shared: self.shared.clone(),
        })
    }

    /// Publishes without waiting for (or being told about) the acknowledgement.
    pub async fn publish_nowait(&self, msg: Message) -> Result<(), Error> {
        self.send(Command::Publish { msg, reply: None }).await
    }

    /// Subscribes to one filter; returns the QoS the broker granted.
    pub async fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<QoS, Error> {
        let filter = filter.into();
        let opts = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let ack = self
            .subscribe_many(vec![(filter.clone(), opts)], Properties::default())
            .await?;
        let reason = ack
            .reasons
            .first()
            .copied()
            .unwrap_or(ReasonCode::UNSPECIFIED_ERROR);
        match reason.0 {
            0..=2 => Ok(QoS::from_u8(reason.0).unwrap_or_default()),
            _ => Err(Error::SubscribeRefused { filter, reason }),
        }
    }

    /// Subscribes to several filters at once, each with its options (QoS, no local, retain
    /// as published, retain handling); `properties` may carry a subscription identifier and
    /// user properties (5.0). Returns the SUBACK: one reason code per filter, in order.
    pub async fn subscribe_many(
        &self,
        filters: Vec<(String, SubscriptionOptions)>,
        properties: Properties,
    ) -> Result<SubAck, Error> {
        let (reply, rx) = oneshot::channel();
        let packet = Subscribe {
            packet_id: 0,
            filters,
            properties,
        };
        self.send(Command::Subscribe { packet, reply }).await?;
        rx.await.map_err(|_| ended(&self.shared))?
    }

    /// Unsubscribes from one filter.
    pub async fn unsubscribe(&self, filter: impl Into<String>) -> Result<UnsubAck, Error> {
        self.unsubscribe_many(vec![filter.into()], Properties::default())
            .await
    }

    /// Unsubscribes from several filters; returns the UNSUBACK (5.0: one reason code per
    /// filter).
    pub async fn unsubscribe_many(
        &self,
        filters: Vec<String>,
        properties: Properties,
    ) -> Result<UnsubAck, Error> {
        let (reply, rx) = oneshot::channel();
        let packet = Unsubscribe {
            packet_id: 0,
            filters,
            properties,
        };
        self.send(Command::Unsubscribe { packet, reply }).await?;
        rx.await.map_err(|_| ended(&self.shared))?
    }

    /// Sends DISCONNECT (normal disconnection) and closes the connection. Messages not yet
    /// acknowledged fail with [`Error::Closed`]; the will is not published.
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, Properties::default())
            .await
    }

    /// Sends DISCONNECT with a reason code and properties (5.0): "disconnect with will
    /// message" (0x04) has the broker publish the will; a session expiry interval changes
    /// the session's.
    pub async fn disconnect_with(
        &self,
        reason: ReasonCode,
        properties: Properties,
    ) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Disconnect {
                reason,
                properties,
                reply,
            })
            .await
            .is_err()
        {
            // Already ended: nothing to disconnect.
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    /// The connection as last seen: connected or not, session present, client id, the
    /// broker's limits and CONNACK properties.
    pub fn info(&self) -> ConnectionInfo {
        lock(&self.shared.info).clone()
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.info).connected
    }

    /// Whether the client's task has ended (disconnected, or the connection lost for good).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn validate(opts: &ConnectOptions) -> Result<(), Error> {
    if opts.host.is_empty() {
        return Err(Error::Invalid("no broker host given".into()));
    }
    if !opts.version.is_v5() && opts.client_id.is_empty() && !opts.clean_start {
        // [MQTT-3.1.3-7] a zero-byte client id needs clean session (3.1.1).
        return Err(Error::Invalid(
            "a persistent session (clean session off) needs a client id".into(),
        ));
    }
    if opts.password.is_some() && opts.username.is_none() && !opts.version.is_v5() {
        // [MQTT-3.1.2-22] in 3.1.1 a password needs a user name.
        return Err(Error::Invalid(
            "a password needs a user name with MQTT 3.1.1 and 3.1".into(),
        ));
    }
    if let Some(w) = &opts.will {
        if w.topic.is_empty() || w.topic.contains(['+', '#', '\0']) {
            return Err(Error::Invalid(format!(
                "invalid will topic '{}': it must be a topic name without + or #",
                w.topic
            )));
        }
    }
    Ok(())
}

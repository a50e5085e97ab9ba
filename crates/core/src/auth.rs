//! The authorization hook: who may publish, subscribe to and receive what.
//!
//! The core stays sans-IO and knows no file format: the shell hands it an [`Authorizer`]
//! (for Makelaar, one reading a Mosquitto ACL file) with [`crate::Broker::set_authorizer`].
//! Without one, everything is allowed and no check is made at all, so a broker without access
//! control pays nothing per message.
//!
//! Where the broker asks, and what a "no" does:
//!
//! | access | asked | when refused |
//! |---|---|---|
//! | [`Access::Subscribe`] | for each filter of a SUBSCRIBE | SUBACK 0x80 (5.0: 0x87 Not authorized) |
//! | [`Access::Write`] | for each PUBLISH received | 3.1.1: acknowledged and dropped; 5.0: PUBACK/PUBREC 0x87 |
//! | [`Access::Write`] | for a will, when it is published | the will is dropped |
//! | [`Access::Read`] | for each message routed to a session (retained ones included), and again when a queued message is sent | that session does not get it |
//!
//! The identity checked is the session's client id and the username the shell authenticated
//! (see [`crate::Broker::handle_connect`]).

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive a message published to this topic name.
    Read,
    /// Publish to this topic name (a will included).
    Write,
    /// Subscribe to this topic filter (`$share/GROUP/...` as requested).
    Subscribe,
}

/// Decides access. Called on the router's thread for every message routed, so it must be
/// cheap and must not block.
pub trait Authorizer: Send {
    /// Whether the client `client_id`, authenticated as `username` (`None`: no username),
    /// may `access` `topic` (a topic name for Read and Write, a filter for Subscribe).
    fn allowed(&self, client_id: &str, username: Option<&str>, topic: &str, access: Access)
        -> bool;
}

impl<F> Authorizer for F
where
    F: Fn(&str, Option<&str>, &str, Access) -> bool + Send,
{
    fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        self(client_id, username, topic, access)
    }
}

//! MQTT 3.1, 3.1.1 and 5.0 packet codec, sans-IO.
//!
//! Plain data and functions: no sockets, no runtime, no clock. A [`Decoder`] turns bytes into
//! [`Packet`]s (refusing an oversize packet from its fixed header, before buffering it) and
//! [`Packet::encode`] turns them back into bytes for a given [`ProtocolVersion`].
//!
//! ```
//! use bytes::BytesMut;
//! use makelaar_proto::{Decoder, Packet, ProtocolVersion};
//!
//! let mut buf = BytesMut::new();
//! Packet::PingReq.encode(ProtocolVersion::V311, &mut buf).unwrap();
//! let mut decoder = Decoder::new(1024);
//! decoder.set_version(ProtocolVersion::V311);
//! assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Packet::PingReq));
//! ```

mod decode;
mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;

pub use decode::Decoder;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;

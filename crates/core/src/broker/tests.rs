//! Tests of the broker rules without a socket.

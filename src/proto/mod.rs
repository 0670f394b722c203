//! Sans-IO protocol pieces: the CONNECT request-head parser ([`connect`]), the PROXY protocol
//! header a load balancer sends first ([`proxy`]) and the canned responses the gateway writes
//! back ([`response`]).
//!
//! Nothing here touches a socket, a clock or the policy: the engine feeds bytes in and writes the
//! returned bytes out.

pub mod connect;
pub mod proxy;
pub mod response;
pub mod tls;

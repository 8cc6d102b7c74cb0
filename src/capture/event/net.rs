//! The network events: a connect and its result, the first datagram of a UDP socket, a DNS
//! answer, and the socket operations (socket, listen, accept, sendto) the cgroup and tracepoint hooks
//! report. Re-exported by `super`, so their paths stay `capture::event::*`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::text::{de_bytes, ser_bytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
    /// An ICMP socket (ping sockets, or raw ICMP).
    Icmp,
    /// Any other raw IP socket.
    Raw,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Icmp => "icmp",
            Transport::Raw => "raw",
        }
    }

    /// From a socket's protocol and type: ICMP before raw (a raw ICMP socket is `icmp`).
    pub fn from_socket(protocol: u8, sock_type: u8) -> Option<Transport> {
        match (protocol, sock_type) {
            (1 | 58, _) => Some(Transport::Icmp),
            (_, 3) => Some(Transport::Raw),
            (6, _) => Some(Transport::Tcp),
            (17, _) => Some(Transport::Udp),
            _ => None,
        }
    }
}

/// A connect(2) on a TCP or UDP socket, as the kernel was about to try it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub cookie: u64,
    pub transport: Transport,
    /// Destination; an IPv4-mapped IPv6 address is given as IPv4 (`mapped` says so).
    pub addr: IpAddr,
    pub port: u16,
    /// The socket was IPv6 and the address IPv4-mapped.
    pub mapped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultPhase {
    /// connect(2) returned.
    Syscall,
    /// The TCP handshake ended (the only outcome of a non-blocking connect).
    TcpState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectResultEvent {
    pub ts_ns: u64,
    /// 0 for results seen outside process context (TCP state changes).
    pub pid: u32,
    pub cookie: u64,
    /// 0 or a negative errno.
    pub error: i32,
    pub phase: ResultPhase,
    /// The destination the socket really connected to (TCP state results only).
    pub final_addr: Option<IpAddr>,
    pub final_port: Option<u16>,
}

/// The first datagram of a connected UDP socket: the connect was real traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UdpSendEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub cookie: u64,
    pub bytes: u32,
    /// Where the datagram really went, read from its headers (None: not readable).
    pub dest: Option<(IpAddr, u16)>,
}

/// A UDP datagram from port 53 delivered to a socket: a DNS message (an answer, unless
/// someone sends queries from port 53), as bytes. The process stage parses it
/// (`process::dns`); nothing here trusts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsEvent {
    pub ts_ns: u64,
    /// The receiving socket's cgroup (the container that will read the answer).
    pub cgroup_id: u64,
    /// The server that sent it (address and port).
    pub server: (IpAddr, u16),
    /// The message's length as its UDP header gave it.
    pub msg_len: u16,
    /// Only the first `abi::DNS_PAYLOAD_MAX` bytes were kept.
    pub truncated: bool,
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub payload: Vec<u8>,
}

/// What a [`SockEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SockOp {
    /// A datagram that names its destination (sendto/sendmsg): `peer`.
    #[serde(rename = "sendto")]
    SendTo,
    /// A TCP socket started listening: `local`.
    Listen,
    /// accept(2) returned a connection: `peer` connected to `local`.
    Accept,
    /// A raw or ICMP socket was created.
    Create,
}

impl SockOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            SockOp::SendTo => "sendto",
            SockOp::Listen => "listen",
            SockOp::Accept => "accept",
            SockOp::Create => "socket",
        }
    }
}

/// A way out of a container that is not a connect(2): a datagram to a named destination, a
/// listening socket, an accepted connection, a raw or ICMP socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SockEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// 0 for records from cgroup socket hooks (SendTo, Create): resolve by pid.
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub op: SockOp,
    pub cookie: u64,
    pub transport: Transport,
    /// The other end: a datagram's destination, an accepted connection's client.
    pub peer: Option<(IpAddr, u16)>,
    /// This end: the listening or accepting address.
    pub local: Option<(IpAddr, u16)>,
    /// Accept: the new descriptor.
    pub result: i32,
}

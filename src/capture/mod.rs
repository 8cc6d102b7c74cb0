//! Capture: the kernel side's programs, loaded and read.
//!
//! In: kernel events through one BPF ring buffer. Out: decoded [`event::Event`]s on a bounded
//! channel. Lost: records the kernel could not reserve (counted per kind and per cgroup in BPF
//! maps, read by [`loader::Counters`]) and records that do not decode (counted by reason).
//! The reader waits on its output channel, by design: the process stage behind it does no
//! I/O, and while it catches up the ring fills and the kernel counts what it could not write,
//! per cgroup, so the sessions that lost events are marked (ARCHITECTURE.md, backpressure).
//! Nothing after the process stage makes the reader wait.

pub mod abi;
pub mod btf;
pub mod decode;
pub mod event;
pub mod loader;
pub mod reader;

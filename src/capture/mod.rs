//! Capture: the kernel side's programs, loaded and read.
//!
//! In: kernel events through one BPF ring buffer. Out: decoded [`event::Event`]s on a bounded
//! channel. Lost: records the kernel could not reserve (counted per kind and per cgroup in BPF
//! maps, read by [`loader::Counters`]) and records that do not decode (counted by reason).
//! The reader never waits on the stages after it: when its output channel is full it counts
//! the event as lost and keeps draining the ring, so the kernel keeps writing.

pub mod abi;
pub mod btf;
pub mod decode;
pub mod event;
pub mod loader;
pub mod reader;

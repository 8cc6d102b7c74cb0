//! Process stage: process table, trees and exec sessions.
//!
//! In: decoded kernel events (`crate::capture::event::Event`). Out: [`crate::model::SessionUpdate`]s
//! for the span builder and the console view. [`session::SessionTracker`] is the pure core;
//! [`run::run`] is the pipeline task around it (container lookup, /proc scan at start-up).

pub mod activity;
pub mod cgroup;
pub mod containerd;
pub mod containers;
pub mod dns;
pub mod identity;
pub mod metrics;
pub mod proc_scan;
pub mod run;

pub mod session;
pub mod table;
pub mod transcript;

pub use session::{SessionTracker, TrackerCounters};

//! Test helpers shared by integration tests that need real parts (containers).
#![allow(dead_code)]

pub mod containers;

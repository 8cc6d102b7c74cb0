//! Process stage: process table, trees and exec sessions.

pub mod model;

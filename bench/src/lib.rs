//! Shared code for the benchmark harnesses: reading cache traces.

pub mod chart;
pub mod trace;

//! Shared code for the benchmark harnesses: reading cache traces, the chart,
//! and the median the timing harnesses report.

pub mod chart;
pub mod trace;

/// The median of `xs` (the upper one for an even count).
///
/// # Panics
///
/// If `xs` is empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

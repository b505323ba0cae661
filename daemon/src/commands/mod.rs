//! Subcommands that are more than a few lines.

pub mod bench_dispatch;
pub mod bench_fleet;
pub mod bench_footprint;
pub mod bench_idle;
pub mod bench_joint;
pub mod bench_motion;
pub mod bench_pipeline;
pub mod bench_sedna_loop;
pub mod bench_surge;
pub mod bench_tracking;
pub mod bench_uplink;
mod child_daemon;
pub mod demo;
pub mod detect;
pub mod snapshot;

/// Nearest-rank percentile (`p` in 0–1) of values sorted ascending: the value at rank
/// ⌈p·n⌉, counting from 1. `None` for no values.
pub(crate) fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(50.0));
        assert_eq!(nearest_rank(&v, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&[3.0], 0.99), Some(3.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}

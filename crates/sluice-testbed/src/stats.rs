//! Percentiles and summaries of latency samples.

use serde::Serialize;

/// The `p`-th percentile (0..=100) by the nearest-rank method: the smallest
/// sample with at least `p`% of all samples at or below it. Sorts `v`.
/// Returns 0 for no samples.
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    percentile_sorted(v, p)
}

/// [`percentile`] of samples already sorted ascending.
pub fn percentile_sorted(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Integer mean (0 for no samples).
pub fn mean(v: &[u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    (v.iter().map(|&x| x as u128).sum::<u128>() / v.len() as u128) as u64
}

/// The usual latency summary, in the samples' unit (nanoseconds here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

/// Summarise `v` (sorts it).
pub fn summary(v: &mut [u64]) -> Summary {
    v.sort_unstable();
    Summary {
        n: v.len(),
        min: v.first().copied().unwrap_or(0),
        p50: percentile_sorted(v, 50.0),
        p90: percentile_sorted(v, 90.0),
        p99: percentile_sorted(v, 99.0),
        max: v.last().copied().unwrap_or(0),
        mean: mean(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 50.0), 50);
        assert_eq!(percentile(&mut v, 99.0), 99);
        assert_eq!(percentile(&mut v, 100.0), 100);
        assert_eq!(percentile(&mut v, 0.0), 1);
        assert_eq!(percentile(&mut [], 50.0), 0);
        assert_eq!(percentile(&mut [7], 99.9), 7);
        let mut w = vec![10, 20, 30, 40];
        assert_eq!(percentile(&mut w, 50.0), 20);
        assert_eq!(percentile(&mut w, 51.0), 30);
        assert_eq!(mean(&[1, 2, 3, 4]), 2);
        let s = summary(&mut [5, 1, 9]);
        assert_eq!((s.n, s.min, s.p50, s.max, s.mean), (3, 1, 5, 9, 5));
    }
}

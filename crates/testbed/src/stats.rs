//! Percentiles of latency samples.

/// The `p`-th percentile (0..=100) by nearest rank; sorts `v`.
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(super::percentile(&mut v, 50.0), 50);
        assert_eq!(super::percentile(&mut v, 99.0), 99);
        assert_eq!(super::percentile(&mut v, 100.0), 100);
    }
}

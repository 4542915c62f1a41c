//! The simulation's own seeded generator for scenario-level choices (workload plan, random fault
//! schedule). SplitMix64: tiny, fast, and identical on every platform, so a seed means the same
//! plan everywhere. madsim's generator drives the runtime itself (scheduling, network latency).

/// A deterministic stream of pseudo-random numbers derived from one seed.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// An independent stream for one purpose, so adding draws to one part of the plan does not
    /// shift every other part.
    pub fn fork(&self, purpose: &str) -> Self {
        let mut h = self.state;
        for b in purpose.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
        }
        SimRng::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]` (inclusive); `lo` when the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// An index chosen with probability proportional to `weights`.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        assert!(total > 0.0, "weights must not all be zero");
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        // Only rounding gets here: the last index that can be chosen at all.
        weights
            .iter()
            .rposition(|w| *w > 0.0)
            .expect("a positive weight")
    }

    /// Exponentially distributed gap with the given rate per unit.
    pub fn exp(&mut self, rate: f64) -> f64 {
        assert!(rate > 0.0);
        -(1.0 - self.unit()).ln() / rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_are_independent() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = SimRng::new(8);
        assert_ne!(xs[0], c.next_u64());
        let f1 = SimRng::new(7).fork("faults").next_u64();
        let f2 = SimRng::new(7).fork("workload").next_u64();
        assert_ne!(f1, f2);
    }

    #[test]
    fn range_and_weighted_stay_in_bounds() {
        let mut r = SimRng::new(1);
        for _ in 0..1000 {
            let x = r.range(3, 9);
            assert!((3..=9).contains(&x));
            assert!(r.weighted(&[0.0, 1.0, 2.0]) >= 1);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}

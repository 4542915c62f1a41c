//! Retry policy: exponential backoff with jitter and a bounded number of attempts.
//!
//! Jitter comes from a small seeded generator owned by the engine instance (no OS randomness,
//! no global state), so the simulation can replay it from its seed.

use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    /// Fraction of the delay added or removed at random (0.3 = ±30 %).
    pub jitter: f64,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1`, given that `attempt` (1-based) just failed.
    /// `unit` is a uniform sample in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        assert!(attempt >= 1, "attempts are 1-based");
        assert!((0.0..1.0).contains(&unit));
        let exp =
            self.base.as_millis() as f64 * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = exp.min(self.max.as_millis() as f64);
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_millis((capped * factor).max(1.0) as u64)
    }

    /// Whether another attempt is allowed after `attempt` failures.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

/// SplitMix64: tiny, fast, good enough for jitter, and seedable.
#[derive(Debug)]
pub struct Jitter {
    state: Mutex<u64>,
}

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter {
            state: Mutex::new(seed),
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next 64 uniform bits.
    pub fn next_u64(&self) -> u64 {
        let mut s = self.state.lock().expect("jitter lock");
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.3,
        }
    }

    #[test]
    fn grows_exponentially_without_jitter_at_midpoint() {
        let p = policy();
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(p.delay(20, 0.5), Duration::from_secs(5));
        assert!(p.allows_another(4) && !p.allows_another(5));
    }

    proptest! {
        #[test]
        fn delay_stays_within_jitter_band(attempt in 1u32..40, unit in 0.0f64..1.0) {
            let p = policy();
            let d = p.delay(attempt, unit).as_millis() as f64;
            let nominal = (100.0 * 2f64.powi((attempt - 1).min(30) as i32)).min(5000.0);
            prop_assert!(d >= (nominal * 0.7).floor() - 1.0 && d <= nominal * 1.3 + 1.0);
        }

        #[test]
        fn jitter_is_uniform_unit_and_replayable(seed in any::<u64>()) {
            let (a, b) = (Jitter::new(seed), Jitter::new(seed));
            for _ in 0..16 {
                let x = a.unit();
                prop_assert!((0.0..1.0).contains(&x));
                prop_assert_eq!(x, b.unit());
            }
        }
    }
}

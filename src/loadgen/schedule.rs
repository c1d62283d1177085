//! The open-loop schedule: when each record is *meant* to be sent.
//!
//! Latency is measured from these intended times, never from when the producer actually got
//! round to sending: a stalled producer, a full client queue or a slow broker then shows up in
//! the percentiles instead of silently lowering the offered load (coordinated omission).

use serde::{Deserialize, Serialize};

/// How inter-arrival gaps are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced: record `n` is due at `n / rate`.
    Fixed,
    /// A Poisson process: exponential gaps with mean `1 / rate` (seeded, so repeatable).
    Poisson,
}

/// A small seeded generator (SplitMix64): repeatable runs without a `rand` dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Intended send times, in nanoseconds from the start of a run, for every record due before
/// `duration_ns`, at `rate` records per second.
pub fn intended_times(rate: f64, arrival: Arrival, duration_ns: u64, seed: u64) -> Vec<u64> {
    if rate.is_nan() || rate <= 0.0 || duration_ns == 0 {
        return Vec::new();
    }
    let mean_gap_ns = 1e9 / rate;
    let mut out = Vec::with_capacity(((duration_ns as f64 / mean_gap_ns) * 1.1) as usize + 16);
    match arrival {
        Arrival::Fixed => {
            let mut n = 0u64;
            loop {
                let t = (n as f64 * mean_gap_ns) as u64;
                if t >= duration_ns {
                    break;
                }
                out.push(t);
                n += 1;
            }
        }
        Arrival::Poisson => {
            let mut rng = SplitMix64::new(seed);
            let mut t = 0.0f64;
            loop {
                // 1 - u is in (0, 1], so the logarithm is finite.
                t += -(1.0 - rng.next_f64()).ln() * mean_gap_ns;
                if t >= duration_ns as f64 {
                    break;
                }
                out.push(t as u64);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_is_evenly_spaced() {
        let t = intended_times(1000.0, Arrival::Fixed, 1_000_000_000, 1);
        assert_eq!(t.len(), 1000);
        assert_eq!(t[0], 0);
        assert_eq!(t[1], 1_000_000);
        assert_eq!(t[999], 999_000_000);
    }

    #[test]
    fn poisson_has_the_right_mean_and_is_repeatable() {
        let a = intended_times(2000.0, Arrival::Poisson, 10_000_000_000, 7);
        let b = intended_times(2000.0, Arrival::Poisson, 10_000_000_000, 7);
        assert_eq!(a, b);
        // 20,000 expected; the standard deviation of a Poisson count is sqrt(20,000) ≈ 141.
        assert!((a.len() as i64 - 20_000).abs() < 1_000, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        // Exponential gaps: their coefficient of variation is 1 (a fixed schedule's is 0).
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((0.9..1.1).contains(&cv), "cv {cv}");
    }

    #[test]
    fn zero_rate_or_duration_gives_nothing() {
        assert!(intended_times(0.0, Arrival::Fixed, 1_000_000_000, 1).is_empty());
        assert!(intended_times(f64::NAN, Arrival::Poisson, 1_000_000_000, 1).is_empty());
        assert!(intended_times(10.0, Arrival::Fixed, 0, 1).is_empty());
    }
}

//! A traffic split between versions of one model: each request that names no version goes
//! to one version, chosen from its routing key (the record key, else the request id).
//!
//! The choice is weighted rendezvous hashing: every version scores the key as
//! `weight / -ln(u)`, with `u` in (0, 1) a hash of (key, version), and the highest score wins.
//! It is the same on every instance and after every restart (FNV-1a and a fixed mixer, no
//! per-process seed); each version gets a share of the keys proportional to its weight; and
//! when one version's weight grows (the others unchanged), only its score grows, so every key
//! it already served stays with it; keys move to it, never away from it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Most versions one split may name.
pub const MAX_SPLIT_VERSIONS: usize = 16;

/// Versions and their integer weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// (version, weight), versions in ascending order, weights > 0.
    weights: Vec<(Arc<str>, u32)>,
}

impl Split {
    /// A split from `version → weight`. Versions with weight 0 are left out; at least one
    /// weight must be positive.
    pub fn new(weights: &BTreeMap<String, u32>) -> Result<Split, String> {
        if weights.len() > MAX_SPLIT_VERSIONS {
            return Err(format!(
                "a split names at most {MAX_SPLIT_VERSIONS} versions, got {}",
                weights.len()
            ));
        }
        let weights: Vec<(Arc<str>, u32)> = weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(v, w)| (Arc::<str>::from(v.as_str()), *w))
            .collect();
        if weights.is_empty() {
            return Err("a split needs at least one version with a weight above 0".into());
        }
        Ok(Split { weights })
    }

    /// `version → weight`.
    pub fn to_map(&self) -> BTreeMap<String, u32> {
        self.weights.iter().map(|(v, w)| (v.to_string(), *w)).collect()
    }

    /// The versions with a positive weight, and their weights.
    pub fn weights(&self) -> &[(Arc<str>, u32)] {
        &self.weights
    }

    /// The version that serves `key`.
    pub fn pick(&self, key: &[u8]) -> &Arc<str> {
        let kh = fnv1a64(key, FNV_OFFSET);
        let mut best = &self.weights[0].0;
        let mut best_score = f64::NEG_INFINITY;
        for (version, weight) in &self.weights {
            let h = mix(fnv1a64(version.as_bytes(), kh));
            // 53 random bits, strictly inside (0, 1).
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(*weight) / -u.ln();
            if score > best_score {
                best_score = score;
                best = version;
            }
        }
        best
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// SplitMix64's finalizer: spreads FNV's output over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(w: &[(&str, u32)]) -> Split {
        Split::new(&w.iter().map(|(v, w)| (v.to_string(), *w)).collect()).unwrap()
    }

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("customer-{i}").into_bytes()).collect()
    }

    #[test]
    fn shares_follow_the_weights() {
        let s = split(&[("1", 90), ("2", 10)]);
        let n = 20_000;
        let to2 = keys(n).iter().filter(|k| &**s.pick(k) == "2").count();
        // 10% ± 1 point (the standard deviation is 0.2 points).
        assert!((1_800..=2_200).contains(&to2), "{to2} of {n} keys on version 2");
        let s = split(&[("1", 1), ("2", 1), ("3", 2)]);
        let mut count = BTreeMap::new();
        for k in keys(n) {
            *count.entry(s.pick(&k).to_string()).or_insert(0usize) += 1;
        }
        assert!((4_500..=5_500).contains(&count["1"]), "{count:?}");
        assert!((9_400..=10_600).contains(&count["3"]), "{count:?}");
    }

    #[test]
    fn a_growing_version_keeps_its_keys_and_the_same_key_always_gets_the_same_version() {
        let small = split(&[("1", 95), ("2", 5)]);
        let big = split(&[("1", 75), ("2", 25)]);
        for k in keys(10_000) {
            assert_eq!(small.pick(&k), small.pick(&k), "deterministic");
            if &**small.pick(&k) == "2" {
                assert_eq!(&**big.pick(&k), "2", "a key of version 2 moved away as it grew");
            }
        }
        // A third version growing from nothing takes keys only.
        let two = split(&[("1", 50), ("2", 50)]);
        let three = split(&[("1", 50), ("2", 50), ("3", 20)]);
        for k in keys(5_000) {
            let after = three.pick(&k);
            assert!(&**after == "3" || after == two.pick(&k), "moved between 1 and 2");
        }
    }

    #[test]
    fn the_choice_is_fixed_across_builds() {
        // Pinned values: an instance built from other sources must route the same way.
        let s = split(&[("1", 50), ("2", 50)]);
        let got: String = (0..16).map(|i| s.pick(format!("k{i}").as_bytes()).to_string()).collect();
        assert_eq!(got, PINNED, "the routing hash changed: every key would move");
    }

    const PINNED: &str = "1212111212222111";

    #[test]
    fn bad_splits_are_refused() {
        assert!(Split::new(&BTreeMap::new()).is_err());
        assert!(Split::new(&[("1".to_string(), 0)].into_iter().collect()).is_err());
        let many: BTreeMap<String, u32> = (0..17).map(|i| (i.to_string(), 1)).collect();
        assert!(Split::new(&many).is_err());
        assert_eq!(split(&[("1", 0), ("2", 3)]).weights().len(), 1);
    }
}

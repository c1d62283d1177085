//! The vocab map: a fast non-cryptographic hash over fixed keys, and the lookup table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style hasher: vocab keys are fixed at load time, so hash flooding is not a
/// concern and a fast multiplicative hash beats SipHash on short keys.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

/// A string → id map plus the byte length of its longest key (longer slices are never
/// looked up).
#[derive(Debug, Clone, Default)]
pub(super) struct Vocab {
    map: FxMap<u32>,
    /// Byte length of the longest key.
    pub(super) max_key_len: usize,
}

impl Vocab {
    /// Makes room for `n` more keys (the vocab size is known before inserting).
    pub(super) fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds `key` → `id`.
    pub(super) fn insert(&mut self, key: &str, id: u32) {
        self.max_key_len = self.max_key_len.max(key.len());
        self.map.insert(key.into(), id);
    }

    #[inline]
    /// The id of `key`.
    pub(super) fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }
}

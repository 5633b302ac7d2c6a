//! A small, fast per-thread pseudo-random generator (wyrand) for split decisions, mirror sampling
//! and generated ids. Not for secrets.

use std::{
    cell::Cell,
    hash::{BuildHasher, RandomState},
};

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// The next random 64-bit value.
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(next);
        let product = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) as u64) ^ (product as u64)
    })
}

/// A value in `0..bound` (`bound` > 0), without modulo bias worth mentioning.
pub fn below(bound: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(bound)) >> 64) as u64
}

/// Lowercase hex of `N` random bytes, written into `out` (which must hold `2 * N` bytes).
pub fn hex_into(out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut bits = 0u64;
    for (index, slot) in out.iter_mut().enumerate() {
        if index % 16 == 0 {
            bits = next_u64();
        }
        *slot = DIGITS[(bits & 0xf) as usize];
        bits >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let value = below(10);
            seen[usize::try_from(value).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn hex_is_lowercase_and_varies() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        hex_into(&mut a);
        hex_into(&mut b);
        assert!(a.iter().all(u8::is_ascii_hexdigit) && a != b);
        assert!(a.iter().all(|c| !c.is_ascii_uppercase()));
    }
}

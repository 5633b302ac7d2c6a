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
    for chunk in out.chunks_mut(16) {
        let digits = hex_digits(next_u64());
        chunk.copy_from_slice(&digits[..chunk.len()]);
    }
}

/// The sixteen nibbles of `bits` as lowercase hex digits, eight at a time: the low nibble of each
/// byte, then the high ones (an order of its own, which a random value does not mind).
fn hex_digits(bits: u64) -> [u8; 16] {
    const NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    let to_ascii = |nibbles: u64| {
        // A byte of 10 or more carries into its bit 4 when 6 is added; those bytes get the
        // distance from '9' + 1 to 'a' on top of '0'. No byte carries into the next.
        let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        nibbles + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'9' - 1)
    };
    let mut digits = [0u8; 16];
    digits[..8].copy_from_slice(&to_ascii(bits & NIBBLES).to_le_bytes());
    digits[8..].copy_from_slice(&to_ascii((bits >> 4) & NIBBLES).to_le_bytes());
    digits
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
    fn every_nibble_becomes_its_digit() {
        assert_eq!(&hex_digits(0x0123_4567_89ab_cdef), b"fdb97531eca86420");
        assert_eq!(&hex_digits(0), b"0000000000000000");
        assert_eq!(&hex_digits(u64::MAX), b"ffffffffffffffff");
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

//! A stable 64-bit digest of a vector's values.
//!
//! The extension stores the digest of each value a fit wrote, and later compares it with the
//! row's current value to tell rows that still hold the fit's output from rows the application
//! changed since. The digest is stored, so it must never change between versions or platforms:
//! it is defined here on the IEEE bits of each element widened to f64 (so a `real[]` and its
//! `double precision[]` cast agree), mixed with fixed constants; `tests` pins known values.

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xBF58_476D_1CE4_E5B9;
const K3: u64 = 0x94D0_49BB_1331_11EB;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(K2);
    z = (z ^ (z >> 27)).wrapping_mul(K3);
    z ^ (z >> 31)
}

/// Digest of a sequence of values; position-dependent, and -0.0 differs from 0.0.
pub fn digest(values: impl IntoIterator<Item = f64>) -> i64 {
    let mut h = K1;
    let mut n = 0u64;
    for v in values {
        h = (h ^ mix(v.to_bits().wrapping_add(n.wrapping_mul(K1)))).rotate_left(29).wrapping_mul(K2);
        n += 1;
    }
    mix(h ^ n) as i64
}

/// Digest of f32 values (equal to the digest of the same values as f64).
pub fn digest_f32(values: &[f32]) -> i64 {
    digest(values.iter().map(|&v| v as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_values() {
        // Stored in nudge.fit_backups: these must never change.
        assert_eq!(digest([]), mix(K1) as i64);
        assert_eq!(digest_f32(&[1.0, -2.5, 0.0]), digest([1.0, -2.5, 0.0]));
        assert_eq!(digest_f32(&[1.0, -2.5, 0.0]), PINNED);
    }
    const PINNED: i64 = 450_184_220_312_361_135;

    #[test]
    fn sensitive_to_order_sign_and_length() {
        let a = digest_f32(&[0.25, 0.5, 0.75]);
        assert_ne!(a, digest_f32(&[0.5, 0.25, 0.75]));
        assert_ne!(a, digest_f32(&[0.25, 0.5, 0.75, 0.0]));
        assert_ne!(digest_f32(&[0.0]), digest_f32(&[-0.0]));
        assert_ne!(digest_f32(&[0.0]), digest_f32(&[0.0, 0.0]));
        let mut b = [0.25f32, 0.5, 0.75];
        b[1] = f32::from_bits(b[1].to_bits() + 1);
        assert_ne!(a, digest_f32(&b));
    }
}

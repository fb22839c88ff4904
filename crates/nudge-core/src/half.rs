//! IEEE binary16 (pgvector's `halfvec` elements): decoding, and rounding an `f32` to the
//! nearest binary16 value (ties to even, as a cast of `real[]` or `vector` to `halfvec` does), so
//! that what a `halfvec` column will hold can be scored before it is written.

/// The value of the binary16 bit pattern `h`.
pub fn to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// `x` rounded to the nearest binary16 value, ties to even, as an `f32` (infinite beyond the
/// binary16 range; NaN stays NaN).
pub fn round(x: f32) -> f32 {
    const MIN_NORMAL: u32 = 0x3880_0000; // 2^-14
    const OVERFLOW: u32 = 0x477f_f000; // 65520: rounds up past the largest binary16, 65504
    let bits = x.to_bits();
    let (sign, abs) = (bits & 0x8000_0000, bits & 0x7fff_ffff);
    if abs > 0x7f80_0000 {
        return x;
    }
    if abs >= OVERFLOW {
        return f32::from_bits(sign | 0x7f80_0000);
    }
    if abs >= MIN_NORMAL {
        // keep 10 of the 23 mantissa bits, rounding the 13 dropped ones to even (a carry
        // moves into the exponent, which is right)
        let lsb = (abs >> 13) & 1;
        return f32::from_bits(sign | ((abs + 0x0fff + lsb) & !0x1fff));
    }
    // subnormal binary16: multiples of 2^-24 (both scalings are exact)
    let q = (f32::from_bits(abs) * 16_777_216.0).round_ties_even() / 16_777_216.0;
    f32::from_bits(sign | q.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary16_value_is_kept() {
        for h in 0..=u16::MAX {
            let v = to_f32(h);
            if v.is_nan() {
                assert!(round(v).is_nan());
            } else {
                assert_eq!(round(v).to_bits(), v.to_bits(), "h = {h:#06x}");
            }
        }
    }

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // between each pair of neighbouring finite positive binary16 values: the midpoint goes
        // to the even one, points just beside it to the nearer one
        for h in 0u16..0x7bff {
            let (a, b) = (to_f32(h), to_f32(h + 1));
            let mid = ((a as f64 + b as f64) / 2.0) as f32; // exact: 11 significant bits + 1
            let even = if h % 2 == 0 { a } else { b };
            assert_eq!(round(mid), even, "h = {h:#06x}");
            assert_eq!(round(-mid), -even);
            assert_eq!(round(f32::from_bits(mid.to_bits() - 1)), a);
            assert_eq!(round(f32::from_bits(mid.to_bits() + 1)), b);
        }
        assert_eq!(round(65519.0), 65504.0);
        assert_eq!(round(65520.0), f32::INFINITY);
        assert_eq!(round(-1e6), f32::NEG_INFINITY);
        assert_eq!(round(1e-9), 0.0);
    }
}

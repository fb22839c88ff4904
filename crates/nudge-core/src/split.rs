//! Seeded train/validation split, bit-compatible with numpy's legacy `RandomState`
//! (`np.random.seed(seed); np.random.permutation(n)`), so published splits can be reproduced.

use crate::error::{invalid, NudgeError, Result};

/// MT19937 as in numpy's legacy `RandomState` (`init_genrand` seeding).
struct Mt19937 {
    mt: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, index: 624 }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..624 {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % 624] & LOWER);
            let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.mt[i] = v;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.generate();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// numpy's legacy `random_interval(max)`: uniform in `0..=max` by masked rejection.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }
}

/// Seeded permutation of `0..n`, identical to numpy's legacy
/// `np.random.seed(seed); np.random.permutation(n)`.
pub fn permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = Mt19937::new(seed);
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// Splits `n` queries into `(train, validation)`: validation is the first
/// `round(n * validation_fraction)` entries of [`permutation`]`(n, seed)` (at least 1 and at
/// most `n - 1`), train the rest. Both lists keep permutation order.
pub fn split(n: usize, validation_fraction: f64, seed: u32) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(validation_fraction.is_finite() && validation_fraction > 0.0 && validation_fraction < 1.0)
    {
        return Err(invalid(
            "validation",
            format!("fraction must be between 0 and 1 (exclusive), got {validation_fraction}"),
        ));
    }
    if n == 0 {
        return Err(NudgeError::Empty {
            what: "queries".into(),
        });
    }
    if n < 2 {
        return Err(invalid(
            "validation",
            "at least 2 queries are needed to hold out a validation set",
        ));
    }
    let n_val = ((n as f64) * validation_fraction)
        .round()
        .clamp(1.0, (n - 1) as f64) as usize;
    let mut p = permutation(n, seed);
    let train = p.split_off(n_val);
    Ok((train, p))
}

/// Deals `0..n` into `k` seeded folds for k-fold cross-validation: position `i` of
/// [`permutation`]`(n, seed)` goes to fold `i % k` (round-robin), each fold keeping permutation
/// order. Folds differ in size by at most one (the first `n % k` folds have one more). In numpy:
///
/// ```text
/// np.random.seed(seed); p = np.random.permutation(n)
/// folds = [p[f::k] for f in range(k)]
/// ```
///
/// Errors (`InvalidParameter`, name `"folds"`): `k < 2`, `k > n`.
pub fn folds(n: usize, k: usize, seed: u32) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        return Err(invalid(
            "folds",
            format!("at least 2 folds are needed, got {k}"),
        ));
    }
    if k > n {
        return Err(invalid(
            "folds",
            format!("{k} folds need at least {k} labelled queries, there are {n}"),
        ));
    }
    let mut out: Vec<Vec<usize>> = (0..k).map(|_| Vec::with_capacity(n / k + 1)).collect();
    for (i, q) in permutation(n, seed).into_iter().enumerate() {
        out[i % k].push(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values computed with numpy 2.4.6:
    //   np.random.seed(s); np.random.permutation(n)
    #[test]
    fn matches_numpy_legacy_permutation() {
        assert_eq!(permutation(10, 0), vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        assert_eq!(
            permutation(1109, 42)[..20],
            [
                883, 342, 56, 694, 720, 614, 1002, 88, 409, 800, 501, 429, 433, 449, 210, 715,
                1042, 420, 199, 773
            ]
        );
        let p = permutation(1109, 0);
        assert_eq!(
            p[..20],
            [
                898, 983, 1085, 493, 847, 809, 833, 472, 317, 522, 298, 513, 629, 204, 702, 571,
                75, 979, 693, 495
            ]
        );
        assert_eq!(p[1104..], [1033, 763, 835, 559, 684]);
        assert_eq!(permutation(1, 7), vec![0]);
        assert_eq!(permutation(0, 7), Vec::<usize>::new());
        assert_eq!(
            permutation(100_000, 123_456_789)[..10],
            [49990, 55988, 19888, 74059, 97457, 38022, 24442, 68518, 84119, 42176]
        );
        assert_eq!(
            permutation(37, u32::MAX),
            vec![
                15, 2, 23, 20, 17, 31, 21, 24, 3, 30, 16, 1, 6, 8, 33, 28, 4, 36, 19, 9, 5, 14, 13,
                10, 29, 11, 18, 27, 32, 25, 26, 22, 0, 7, 12, 34, 35
            ]
        );
        assert_eq!(permutation(2, 1), vec![0, 1]);
    }

    #[test]
    fn permutation_is_a_permutation() {
        for n in [0usize, 1, 2, 3, 17, 1000] {
            let mut p = permutation(n, 5);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (t1, v1) = split(1109, 0.1, 0).unwrap();
        let (t2, v2) = split(1109, 0.1, 0).unwrap();
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 111);
        assert_eq!(t1.len(), 998);
        let p = permutation(1109, 0);
        assert_eq!(v1[..], p[..111]);
        assert_eq!(t1[..], p[111..]);
        let (t3, v3) = split(1109, 0.1, 1).unwrap();
        assert_ne!(v1, v3);
        assert_eq!(t3.len() + v3.len(), 1109);
        // at least one validation and one training query
        assert_eq!(split(2, 0.01, 0).unwrap().1.len(), 1);
        assert_eq!(split(2, 0.99, 0).unwrap().0.len(), 1);
        assert_eq!(split(3, 0.5, 0).unwrap().1.len(), 2); // round half away from zero
    }

    #[test]
    fn split_rejects_bad_input() {
        for f in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(split(10, f, 0), Err(NudgeError::InvalidParameter { .. })),
                "{f}"
            );
        }
        assert!(matches!(split(0, 0.1, 0), Err(NudgeError::Empty { .. })));
        assert!(matches!(
            split(1, 0.1, 0),
            Err(NudgeError::InvalidParameter { .. })
        ));
    }

    #[test]
    fn folds_are_round_robin_over_the_permutation() {
        // numpy 2.x: np.random.seed(0); p = np.random.permutation(10) -> [2 8 4 9 1 6 7 3 0 5]
        assert_eq!(
            folds(10, 3, 0).unwrap(),
            vec![vec![2, 9, 7, 5], vec![8, 1, 3], vec![4, 6, 0]]
        );
        for (n, k, seed) in [
            (10usize, 2usize, 1u32),
            (11, 5, 7),
            (1000, 7, 42),
            (5, 5, 3),
        ] {
            let f = folds(n, k, seed).unwrap();
            assert_eq!(f, folds(n, k, seed).unwrap());
            assert_eq!(f.len(), k);
            let p = permutation(n, seed);
            for (i, fold) in f.iter().enumerate() {
                assert_eq!(fold.len(), n / k + usize::from(i < n % k));
                let want: Vec<usize> = p.iter().skip(i).step_by(k).copied().collect();
                assert_eq!(fold, &want);
            }
            let mut all: Vec<usize> = f.concat();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(folds(100, 4, 1).unwrap(), folds(100, 4, 2).unwrap());
    }

    #[test]
    fn folds_reject_bad_input() {
        for (n, k) in [(10usize, 0usize), (10, 1), (3, 4), (0, 2)] {
            assert!(
                matches!(
                    folds(n, k, 0),
                    Err(NudgeError::InvalidParameter { name: "folds", .. })
                ),
                "{n} {k}"
            );
        }
    }
}

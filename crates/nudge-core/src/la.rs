//! Small linear-algebra helpers around the `gemm` crate (private).

use ndarray::ArrayView2;

/// `dst[i * dst_rs + j * dst_cs] = sum_k a[i, k] * b[j, k]` for `i < a.nrows()`,
/// `j < b.nrows()`: the product `a . b^T`, overwriting `dst`. `a` and `b` may have any strides.
/// `threads > 1` lets gemm split the work on the current rayon pool.
///
/// Panics (internal use only) if `dst` is too short for the requested layout.
pub(crate) fn abt_into(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    threads: usize,
) {
    let (m, k) = a.dim();
    let n = b.nrows();
    assert_eq!(b.ncols(), k, "abt_into: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    let last = (m - 1) * dst_rs + (n - 1) * dst_cs;
    assert!(last < dst.len(), "abt_into: destination too small");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_rs + j * dst_cs] = 0.0;
            }
        }
        return;
    }
    let sa = a.strides();
    let sb = b.strides();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views guarantee that every (i, k) / (j, k) element addressed through their
    // strides is in bounds; the destination extent was checked above; `read_dst = false` so
    // the destination's previous contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[0],
            sb[1],
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    #[test]
    fn matches_naive_for_odd_layouts() {
        let a = Array2::from_shape_fn((7, 5), |(i, j)| (i * 5 + j) as f32 * 0.25 - 3.0);
        let b = Array2::from_shape_fn((9, 5), |(i, j)| ((i * 3 + j * 7) % 11) as f32 - 5.0);
        let bt = b.t().to_owned(); // column-major copy
        let bv = bt.t();
        let a_rev = a.slice(s![..;-1, ..]);
        for (av, flip) in [(a.view(), false), (a_rev, true)] {
            for bview in [b.view(), bv] {
                let mut dst = vec![f32::NAN; 7 * 9];
                abt_into(av, bview, &mut dst, 9, 1, 1);
                for i in 0..7 {
                    let ai = if flip { 6 - i } else { i };
                    for j in 0..9 {
                        let want: f32 = (0..5).map(|t| a[[ai, t]] * b[[j, t]]).sum();
                        assert!((dst[i * 9 + j] - want).abs() < 1e-4);
                    }
                }
                let mut dst = vec![f32::NAN; 7 * 9];
                abt_into(av, bview, &mut dst, 1, 7, 2);
                for i in 0..7 {
                    let ai = if flip { 6 - i } else { i };
                    for j in 0..9 {
                        let want: f32 = (0..5).map(|t| a[[ai, t]] * b[[j, t]]).sum();
                        assert!((dst[i + 7 * j] - want).abs() < 1e-4);
                    }
                }
            }
        }
        let z = Array2::<f32>::zeros((2, 0));
        let mut dst = vec![f32::NAN; 4];
        abt_into(z.view(), z.view(), &mut dst, 2, 1, 1);
        assert_eq!(dst, vec![0.0; 4]);
    }
}

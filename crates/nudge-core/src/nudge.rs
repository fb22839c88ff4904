//! The two closed forms: NUDGE-M (`d^ + gamma g`) and NUDGE-N (unit vector within squared
//! distance `gamma` of `d^`, as close to `g` as allowed). See the crate README, "Edge-case rules".

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, mismatch, NudgeError, Result};

/// Which closed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    NudgeM,
    NudgeN,
}

impl FromStr for Method {
    type Err = NudgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nudge_m" => Ok(Method::NudgeM),
            "nudge_n" => Ok(Method::NudgeN),
            _ => Err(invalid(
                "method",
                format!("unknown method \"{s}\" (expected nudge_m or nudge_n)"),
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::NudgeM => "nudge_m",
            Method::NudgeN => "nudge_n",
        })
    }
}

/// What NUDGE-N does with a record whose `d^ . G < 0`.
/// `Skip` (default) is the reference's heuristic: leave it unchanged. `Move` applies the closed
/// form anyway. NUDGE-M is not affected (the reference moves such records too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NegativeRule {
    #[default]
    Skip,
    Move,
}

/// `G` counts as parallel to `d^` when `|G - (d^.G) d^| <= PARALLEL_TOL * |G|` (angle below
/// about 1e-9 rad): NUDGE-N then leaves the record unchanged.
pub const PARALLEL_TOL: f64 = 1e-9;

/// Checks the step size for `method`: finite, `>= 0`, and `<= 4` for NUDGE-N.
pub fn check_gamma(method: Method, gamma: f64) -> Result<()> {
    if !gamma.is_finite() || gamma < 0.0 {
        return Err(invalid(
            "gamma",
            format!("must be a finite number >= 0, got {gamma}"),
        ));
    }
    if method == Method::NudgeN && gamma > 4.0 {
        return Err(invalid(
            "gamma",
            format!("must be between 0 and 4 for nudge_n, got {gamma}"),
        ));
    }
    Ok(())
}

/// `(cos phi, sin phi)` for NUDGE-N's step `gamma`: `cos phi = 1 - gamma/2`.
pub(crate) fn nudge_n_angle(gamma: f64) -> (f64, f64) {
    let c = 1.0 - gamma / 2.0;
    let s = 0.5 * (gamma * (4.0 - gamma)).max(0.0).sqrt();
    (c, s)
}

/// How one record behaves under a method, independent of gamma (for gamma > 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Geom {
    /// Never moves (G = 0; NUDGE-N: G parallel to d^, or d^.G < 0 under `Skip`).
    Fixed,
    /// NUDGE-M: moves along `dir = g`. NUDGE-N: rotates from d^ towards g in the plane
    /// (d^, dir = z); `cos_t`, `sin_t` describe the angle theta between d^ and g.
    Moves { cos_t: f64, sin_t: f64 },
}

/// Row geometry in f64: writes d^ to `dh` and the direction (`g` for NUDGE-M, `z` for NUDGE-N)
/// to `dir` (zeros when `Fixed`). `Err(true)`: non-finite input; `Err(false)`: zero `d`.
pub(crate) fn row_geom(
    method: Method,
    rule: NegativeRule,
    d: &[f32],
    g: &[f32],
    dh: &mut [f64],
    dir: &mut [f64],
) -> std::result::Result<Geom, bool> {
    let mut dn2 = 0f64;
    for (o, &x) in dh.iter_mut().zip(d) {
        let x = x as f64;
        *o = x;
        dn2 += x * x;
    }
    if !dn2.is_finite() {
        return Err(true);
    }
    if dn2 == 0.0 {
        return Err(false);
    }
    let inv = 1.0 / dn2.sqrt();
    dh.iter_mut().for_each(|x| *x *= inv);
    let mut gn2 = 0f64;
    let mut p = 0f64;
    for (&x, &h) in g.iter().zip(dh.iter()) {
        let x = x as f64;
        gn2 += x * x;
        p += x * h;
    }
    dir.iter_mut().for_each(|x| *x = 0.0);
    if !gn2.is_finite() {
        return Err(true);
    }
    if gn2 == 0.0 {
        return Ok(Geom::Fixed);
    }
    let gn = gn2.sqrt();
    match method {
        Method::NudgeM => {
            for (o, &x) in dir.iter_mut().zip(g) {
                *o = x as f64 / gn;
            }
            Ok(Geom::Moves {
                cos_t: p / gn,
                sin_t: 0.0,
            })
        }
        Method::NudgeN => {
            if rule == NegativeRule::Skip && p < 0.0 {
                return Ok(Geom::Fixed);
            }
            let mut pn2 = 0f64;
            for ((o, &x), &h) in dir.iter_mut().zip(g).zip(dh.iter()) {
                let v = x as f64 - p * h;
                *o = v;
                pn2 += v * v;
            }
            let pn = pn2.sqrt();
            if pn <= PARALLEL_TOL * gn {
                dir.iter_mut().for_each(|x| *x = 0.0);
                return Ok(Geom::Fixed);
            }
            dir.iter_mut().for_each(|x| *x /= pn);
            Ok(Geom::Moves {
                cos_t: p / gn,
                sin_t: pn / gn,
            })
        }
    }
}

/// Writes the new vector of one moving record at step `gamma > 0` (f64 maths, f32 output).
pub(crate) fn row_new(
    method: Method,
    gamma: f64,
    geom: Geom,
    dh: &[f64],
    dir: &[f64],
    out: &mut [f32],
) {
    match (method, geom) {
        (_, Geom::Fixed) => {}
        (Method::NudgeM, Geom::Moves { .. }) => {
            for ((o, &h), &z) in out.iter_mut().zip(dh).zip(dir) {
                *o = (h + gamma * z) as f32;
            }
        }
        (Method::NudgeN, Geom::Moves { cos_t, sin_t }) => {
            let (cp, sp) = nudge_n_angle(gamma);
            // x = g when theta <= phi (d^.g >= 1 - gamma/2), else the boundary point at angle phi.
            let (c, s) = if cos_t >= cp {
                (cos_t, sin_t)
            } else {
                (cp, sp)
            };
            for ((o, &h), &z) in out.iter_mut().zip(dh).zip(dir) {
                *o = (c * h + s * z) as f32;
            }
        }
    }
}

/// New vectors for the moving records at step `gamma`.
///
/// `d`: their ORIGINAL stored vectors (any norm; normalised here in f64); `g`: their raw `G`
/// rows. Returns `(vectors, changed)`: NUDGE-M gives `d^ + gamma g` (not unit), NUDGE-N the
/// closed form of NUDGE.md (unit). Rows that do not move (see the README's edge-case rules:
/// `G = 0`, `gamma = 0`, and for NUDGE-N `G` parallel to `d^` or `d^.G < 0` under
/// [`NegativeRule::Skip`]) are returned as the original `d`, bit for bit, with `changed = false`.
/// A result that overflows f32 (a huge NUDGE-M `gamma`) is an error (`NonFinite`).
pub fn apply(
    method: Method,
    gamma: f64,
    d: ArrayView2<f32>,
    g: ArrayView2<f32>,
    rule: NegativeRule,
) -> Result<(Array2<f32>, Vec<bool>)> {
    check_gamma(method, gamma)?;
    if d.nrows() != g.nrows() {
        return Err(mismatch(
            "numbers of record vectors and gradient rows",
            d.nrows(),
            g.nrows(),
        ));
    }
    if d.ncols() != g.ncols() {
        return Err(mismatch(
            "record vector and gradient dimensions",
            d.ncols(),
            g.ncols(),
        ));
    }
    let dim = d.ncols();
    let n = d.nrows();
    let mut out = d.to_owned();
    let mut changed = vec![false; n];
    // Validate everything first (errors name the first bad row).
    for (i, row) in g.outer_iter().enumerate() {
        if row.iter().any(|x| !x.is_finite()) {
            return Err(NudgeError::NonFinite {
                what: "gradients".into(),
                index: i,
            });
        }
    }
    for (i, row) in d.outer_iter().enumerate() {
        let mut s = 0f64;
        for &x in row.iter() {
            s += (x as f64) * (x as f64);
        }
        if !s.is_finite() {
            return Err(NudgeError::NonFinite {
                what: "record vectors".into(),
                index: i,
            });
        }
        if s == 0.0 {
            return Err(NudgeError::ZeroVector {
                what: "record vectors".into(),
                index: i,
            });
        }
    }
    if gamma == 0.0 || n == 0 || dim == 0 {
        return Ok((out, changed));
    }
    let work = |(i, (mut o, c)): (usize, (ndarray::ArrayViewMut1<f32>, &mut bool))| {
        let mut dh = vec![0f64; dim];
        let mut dir = vec![0f64; dim];
        let drow = d.row(i);
        let grow = g.row(i);
        let dv: Vec<f32> = drow.iter().copied().collect();
        let gv: Vec<f32> = grow.iter().copied().collect();
        if let Ok(geom @ Geom::Moves { .. }) = row_geom(method, rule, &dv, &gv, &mut dh, &mut dir) {
            let mut tmp = vec![0f32; dim];
            row_new(method, gamma, geom, &dh, &dir, &mut tmp);
            o.iter_mut().zip(tmp).for_each(|(o, t)| *o = t);
            *c = true;
        }
    };
    if n * dim >= 1 << 16 {
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(changed.par_iter_mut())
            .enumerate()
            .for_each(work);
    } else {
        out.axis_iter_mut(Axis(0))
            .zip(changed.iter_mut())
            .enumerate()
            .for_each(work);
    }
    // A huge NUDGE-M gamma overflows f32: report it rather than return infinities.
    if let Some(i) = out
        .outer_iter()
        .position(|row| row.iter().any(|x| !x.is_finite()))
    {
        return Err(NudgeError::NonFinite {
            what: format!("nudged vectors (gamma {gamma:e} is too large)"),
            index: i,
        });
    }
    Ok((out, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};

    fn unit(v: &[f64]) -> Vec<f64> {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect()
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn row64(a: &Array2<f32>, i: usize) -> Vec<f64> {
        a.row(i).iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("NUDGE_N".parse::<Method>().unwrap(), Method::NudgeN);
        assert_eq!(" nudge_m ".parse::<Method>().unwrap(), Method::NudgeM);
        assert!(matches!(
            "nudge".parse::<Method>(),
            Err(NudgeError::InvalidParameter { name: "method", .. })
        ));
        assert_eq!(Method::NudgeN.to_string(), "nudge_n");
        assert_eq!(NegativeRule::default(), NegativeRule::Skip);
    }

    #[test]
    fn nudge_m_matches_formula() {
        let d = array![[3.0f32, 4.0, 0.0], [0.0, 0.0, 2.0]];
        let g = array![[0.0f32, 0.0, 5.0], [1.0, 1.0, -1.0]];
        let (x, ch) = apply(Method::NudgeM, 0.5, d.view(), g.view(), NegativeRule::Skip).unwrap();
        assert_eq!(ch, vec![true, true]);
        let want0 = [0.6, 0.8, 0.5];
        let gu = unit(&[1.0, 1.0, -1.0]);
        let want1 = [0.5 * gu[0], 0.5 * gu[1], 1.0 + 0.5 * gu[2]];
        for (w, r) in [(want0.to_vec(), 0), (want1.to_vec(), 1)] {
            for j in 0..3 {
                assert!((x[[r, j]] as f64 - w[j]).abs() < 1e-6, "{x}");
            }
        }
        // |x - d^| == gamma
        let dh1 = [0.0, 0.0, 1.0];
        let diff: f64 = (0..3)
            .map(|j| (x[[1, j]] as f64 - dh1[j]).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((diff - 0.5).abs() < 1e-6);
        // negative d^.G still moves under nudge_m, under both rules
        let d = array![[1.0f32, 0.0]];
        let g = array![[-1.0f32, 1.0]];
        for rule in [NegativeRule::Skip, NegativeRule::Move] {
            let (x, ch) = apply(Method::NudgeM, 1.0, d.view(), g.view(), rule).unwrap();
            assert_eq!(ch, vec![true]);
            let s = 1.0 / 2f64.sqrt();
            assert!(
                (x[[0, 0]] as f64 - (1.0 - s)).abs() < 1e-6 && (x[[0, 1]] as f64 - s).abs() < 1e-6
            );
        }
        // parallel G: d^ scaled by 1 + gamma
        let (x, ch) = apply(
            Method::NudgeM,
            0.25,
            array![[0.0f32, 2.0]].view(),
            array![[0.0f32, 7.0]].view(),
            NegativeRule::Skip,
        )
        .unwrap();
        assert_eq!(ch, vec![true]);
        assert_eq!(x, array![[0.0f32, 1.25]]);
    }

    #[test]
    fn nudge_n_matches_formula() {
        // random-ish small vectors, several gammas
        let d = array![
            [1.0f32, 2.0, 0.5, -1.0],
            [0.3, -0.2, 0.9, 0.1],
            [2.0, 0.0, 0.0, 0.0]
        ];
        let g = array![
            [0.5f32, 1.0, 3.0, 0.2],
            [1.0, 0.5, 0.7, 0.0],
            [1.0, 1.0, 0.0, 0.0]
        ];
        for &gamma in &[0.01, 0.1, 0.3, 0.6, 1.0, 2.0, 3.5, 4.0] {
            let (x, ch) = apply(
                Method::NudgeN,
                gamma,
                d.view(),
                g.view(),
                NegativeRule::Skip,
            )
            .unwrap();
            for (i, &c) in ch.iter().enumerate() {
                assert!(c);
                let dh = unit(&row64(&d.to_owned(), i));
                let gv = row64(&g.to_owned(), i);
                let gu = unit(&gv);
                let xi = row64(&x, i);
                // unit norm
                assert!((dot(&xi, &xi) - 1.0).abs() < 1e-6);
                if dot(&dh, &gu) >= 1.0 - gamma / 2.0 {
                    // x = g branch
                    for j in 0..4 {
                        assert!((xi[j] - gu[j]).abs() < 1e-6, "gamma {gamma} row {i}");
                    }
                } else {
                    // |x - d^|^2 == gamma, and x in the plane of d^ and G, on G's side
                    let dist2: f64 = xi.iter().zip(&dh).map(|(a, b)| (a - b).powi(2)).sum();
                    assert!(
                        (dist2 - gamma).abs() < 1e-6,
                        "gamma {gamma} row {i} {dist2}"
                    );
                    let p = dot(&dh, &gv);
                    let z: Vec<f64> = gv.iter().zip(&dh).map(|(g, h)| g - p * h).collect();
                    let z = unit(&z);
                    let c = 1.0 - gamma / 2.0;
                    let s = 0.5 * (gamma * (4.0 - gamma)).sqrt();
                    for j in 0..4 {
                        assert!((xi[j] - (c * dh[j] + s * z[j])).abs() < 1e-6);
                    }
                    // it improves G.x over G.d^ and is optimal among points at that distance:
                    assert!(dot(&gv, &xi) > dot(&gv, &dh));
                }
            }
        }
        // gamma = 4: every moving record goes to g
        let (x, _) = apply(Method::NudgeN, 4.0, d.view(), g.view(), NegativeRule::Skip).unwrap();
        let gu = unit(&row64(&g.to_owned(), 0));
        for j in 0..4 {
            assert!((x[[0, j]] as f64 - gu[j]).abs() < 1e-6);
        }
    }

    #[test]
    fn edge_rules() {
        // row 0: G = 0; row 1: G parallel to d; row 2: d^.G < 0; row 3: antiparallel; row 4: moves
        let d = array![
            [1.0f32, 0.0, 0.0],
            [0.0, 3.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 2.0],
            [1.0, 0.0, 0.0]
        ];
        let g = array![
            [0.0f32, 0.0, 0.0],
            [0.0, 0.5, 0.0],
            [-2.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
            [0.0, 1.0, 0.0]
        ];
        let (x, ch) = apply(Method::NudgeN, 0.3, d.view(), g.view(), NegativeRule::Skip).unwrap();
        assert_eq!(ch, vec![false, false, false, false, true]);
        for i in 0..4 {
            assert_eq!(x.row(i), d.row(i)); // original, not normalised
        }
        let (x, ch) = apply(Method::NudgeN, 0.3, d.view(), g.view(), NegativeRule::Move).unwrap();
        assert_eq!(ch, vec![false, false, true, false, true]);
        let r2 = row64(&x, 2);
        let dh = unit(&[1.0, 1.0, 0.0]);
        let dist2: f64 = r2.iter().zip(&dh).map(|(a, b)| (a - b).powi(2)).sum();
        assert!((dist2 - 0.3).abs() < 1e-6);
        // nudge_m: only G = 0 is unchanged
        let (x, ch) = apply(Method::NudgeM, 0.3, d.view(), g.view(), NegativeRule::Skip).unwrap();
        assert_eq!(ch, vec![false, true, true, true, true]);
        assert_eq!(x.row(0), d.row(0));
        assert_eq!(x.row(3), Array1::from(vec![0.0f32, 0.0, 0.7]));
        // gamma = 0: nothing changes, originals returned
        for m in [Method::NudgeM, Method::NudgeN] {
            let (x, ch) = apply(m, 0.0, d.view(), g.view(), NegativeRule::Move).unwrap();
            assert_eq!(x, d);
            assert!(ch.iter().all(|c| !c));
        }
        // nearly parallel beyond the tolerance still moves
        let d = array![[1.0f32, 0.0]];
        let g = array![[1.0f32, 1e-6]];
        let (x, ch) = apply(Method::NudgeN, 0.1, d.view(), g.view(), NegativeRule::Skip).unwrap();
        assert_eq!(ch, vec![true]);
        assert!((x[[0, 1]] - 1e-6).abs() < 1e-9);
    }

    #[test]
    fn errors() {
        let d = array![[1.0f32, 0.0], [0.0, 1.0]];
        let g = array![[1.0f32, 0.0], [0.0, 1.0]];
        for (m, gm) in [
            (Method::NudgeN, 4.01),
            (Method::NudgeN, -0.1),
            (Method::NudgeM, -1.0),
            (Method::NudgeM, f64::NAN),
            (Method::NudgeM, f64::INFINITY),
        ] {
            assert!(matches!(
                apply(m, gm, d.view(), g.view(), NegativeRule::Skip),
                Err(NudgeError::InvalidParameter { name: "gamma", .. })
            ));
        }
        assert!(apply(
            Method::NudgeM,
            100.0,
            d.view(),
            g.view(),
            NegativeRule::Skip
        )
        .is_ok());
        let d3 = array![[1.0f32, 0.0, 0.0]];
        assert!(matches!(
            apply(Method::NudgeM, 0.1, d3.view(), g.view(), NegativeRule::Skip),
            Err(NudgeError::DimensionMismatch { .. })
        ));
        let g1 = array![[1.0f32, 0.0, 1.0]];
        assert!(apply(
            Method::NudgeM,
            0.1,
            d3.view(),
            g1.view(),
            NegativeRule::Skip
        )
        .is_ok());
        let g2 = array![[1.0f32, 0.0]];
        assert!(matches!(
            apply(
                Method::NudgeM,
                0.1,
                d3.view(),
                g2.view(),
                NegativeRule::Skip
            ),
            Err(NudgeError::DimensionMismatch { .. })
        ));
        let mut dn = d.clone();
        dn[[1, 1]] = f32::NAN;
        assert_eq!(
            apply(Method::NudgeN, 0.1, dn.view(), g.view(), NegativeRule::Skip),
            Err(NudgeError::NonFinite {
                what: "record vectors".into(),
                index: 1
            })
        );
        let mut gn = g.clone();
        gn[[0, 0]] = f32::NEG_INFINITY;
        assert_eq!(
            apply(Method::NudgeN, 0.1, d.view(), gn.view(), NegativeRule::Skip),
            Err(NudgeError::NonFinite {
                what: "gradients".into(),
                index: 0
            })
        );
        let mut dz = d.clone();
        dz.row_mut(0).fill(0.0);
        assert_eq!(
            apply(Method::NudgeN, 0.1, dz.view(), g.view(), NegativeRule::Skip),
            Err(NudgeError::ZeroVector {
                what: "record vectors".into(),
                index: 0
            })
        );
        // zero vector is reported even at gamma = 0
        assert!(apply(Method::NudgeN, 0.0, dz.view(), g.view(), NegativeRule::Skip).is_err());
        // empty input is fine
        let e = Array2::<f32>::zeros((0, 3));
        let (x, c) = apply(Method::NudgeN, 0.1, e.view(), e.view(), NegativeRule::Skip).unwrap();
        assert_eq!(x.nrows(), 0);
        assert!(c.is_empty());
        // huge values: f64 norms do not overflow
        let big = array![[3.0e30f32, 4.0e30]];
        let (x, c) = apply(
            Method::NudgeN,
            0.5,
            big.view(),
            array![[1.0f32, 0.0]].view(),
            NegativeRule::Skip,
        )
        .unwrap();
        assert!(c[0] && x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn parallel_path_matches_serial() {
        let n = 700;
        let dim = 128; // n * dim >= 2^16 -> parallel path
        let d = Array2::from_shape_fn((n, dim), |(i, j)| {
            (((i * 31 + j * 17) % 23) as f32 - 11.0) + 0.5
        });
        let g = Array2::from_shape_fn((n, dim), |(i, j)| ((i * 7 + j * 13) % 19) as f32 - 6.0);
        let (x, c) = apply(Method::NudgeN, 0.2, d.view(), g.view(), NegativeRule::Skip).unwrap();
        let (xs, cs) = apply(
            Method::NudgeN,
            0.2,
            d.slice(ndarray::s![..10, ..]),
            g.slice(ndarray::s![..10, ..]),
            NegativeRule::Skip,
        )
        .unwrap();
        assert_eq!(x.slice(ndarray::s![..10, ..]), xs);
        assert_eq!(c[..10], cs[..]);
    }
}

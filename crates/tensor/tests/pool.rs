//! Pooling kernels against the direct-loop oracle and finite differences, on random shapes.

mod common;
use common::*;
use proptest::prelude::*;
use tensor::*;

fn pool_case() -> impl Strategy<Value = ([usize; 4], Pool2dParams, u64)> {
    (
        (1usize..=2, 1usize..=3, 1usize..=9, 1usize..=9),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2, any::<bool>()),
        any::<u64>(),
    )
        .prop_filter_map("window does not fit", |((n, c, h, w), (kh, kw, sh, sw), (ph, pw, ceil), seed)| {
            let p = Pool2dParams { kernel: [kh, kw], stride: [sh, sw], padding: [ph, pw], ceil_mode: ceil };
            let ok = ph <= kh / 2 && pw <= kw / 2 && h + 2 * ph >= kh && w + 2 * pw >= kw;
            ok.then_some(([n, c, h, w], p, seed))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn max_pool_matches_reference((xs, p, seed) in pool_case()) {
        let x = randn(&xs, seed);
        let (vals, idx, os) = reference::max_pool2d(&f64s(&x), xs, p);
        let (y, yi) = max_pool2d(&x, p).unwrap();
        prop_assert_eq!(y.shape(), &os[..]);
        assert_close("max pool", &y.to_vec_f32().unwrap(), &vals, 0.0);
        prop_assert_eq!(yi.to_vec_i64().unwrap(), idx);
        // Random inputs have no ties, so max pooling is locally linear: finite differences hold.
        let g = randn(&os, seed + 1);
        let gf = f64s(&g);
        let dx = max_pool2d_backward(&g, &yi, &xs).unwrap();
        let fd = finite_diff(&f64s(&x), 1e-6, |xv| reference::max_pool2d(xv, xs, p).0.iter().zip(&gf).map(|(a, b)| a * b).sum());
        assert_close("max pool grad", &dx.to_vec_f32().unwrap(), &fd, 1e-4);
    }

    /// The values-only pooling of inference gives the reference's values, NaN included.
    #[test]
    fn max_pool_values_match_reference((xs, p, seed) in pool_case(), nan_at in proptest::option::of(any::<prop::sample::Index>())) {
        let mut data = randn(&xs, seed).to_vec_f32().unwrap();
        if let Some(at) = nan_at {
            let i = at.index(data.len());
            data[i] = f32::NAN;
        }
        let x = Tensor::from_vec(data, &xs).unwrap();
        let (want, _, os) = reference::max_pool2d(&f64s(&x), xs, p);
        let y = max_pool2d_values(&x, p).unwrap();
        prop_assert_eq!(y.shape(), &os[..]);
        for (i, (&got, &want)) in y.to_vec_f32().unwrap().iter().zip(&want).enumerate() {
            prop_assert!(got as f64 == want || (got.is_nan() && want.is_nan()), "output {}: {} vs {}", i, got, want);
        }
    }

    #[test]
    fn avg_pool_matches_reference((xs, p, seed) in pool_case(), include_pad in any::<bool>()) {
        let x = randn(&xs, seed);
        let (want, os) = reference::avg_pool2d(&f64s(&x), xs, p, include_pad);
        let y = avg_pool2d(&x, p, include_pad).unwrap();
        prop_assert_eq!(y.shape(), &os[..]);
        assert_close("avg pool", &y.to_vec_f32().unwrap(), &want, 1e-5);
        let g = randn(&os, seed + 1);
        let gf = f64s(&g);
        let dx = avg_pool2d_backward(&g, &xs, p, include_pad).unwrap();
        let fd = finite_diff(&f64s(&x), 1e-3, |xv| reference::avg_pool2d(xv, xs, p, include_pad).0.iter().zip(&gf).map(|(a, b)| a * b).sum());
        assert_close("avg pool grad", &dx.to_vec_f32().unwrap(), &fd, 1e-4);
    }

    #[test]
    fn adaptive_pool_matches_reference(n in 1usize..=2, c in 1usize..=3, h in 1usize..=9, w in 1usize..=9, oh in 1usize..=5, ow in 1usize..=5, seed in any::<u64>()) {
        let xs = [n, c, h, w];
        let x = randn(&xs, seed);
        let want = reference::adaptive_avg_pool2d(&f64s(&x), xs, [oh, ow]);
        let y = adaptive_avg_pool2d(&x, [oh, ow]).unwrap();
        assert_close("adaptive pool", &y.to_vec_f32().unwrap(), &want, 1e-5);
        let g = randn(&[n, c, oh, ow], seed + 1);
        let gf = f64s(&g);
        let dx = adaptive_avg_pool2d_backward(&g, &xs).unwrap();
        let fd = finite_diff(&f64s(&x), 1e-3, |xv| reference::adaptive_avg_pool2d(xv, xs, [oh, ow]).iter().zip(&gf).map(|(a, b)| a * b).sum());
        assert_close("adaptive pool grad", &dx.to_vec_f32().unwrap(), &fd, 1e-4);
    }
}

#[test]
fn pooling_rejects_bad_windows() {
    let x = Tensor::zeros(&[1, 1, 4, 4]);
    assert!(max_pool2d(&x, Pool2dParams::new(3).padding(2)).is_err(), "padding over half the kernel");
    assert!(max_pool2d(&x, Pool2dParams::new(5)).is_err(), "kernel larger than input");
    assert!(avg_pool2d(&x, Pool2dParams::new(2).stride(0), true).is_err());
    assert!(adaptive_avg_pool2d(&x, [0, 1]).is_err());
    assert!(max_pool2d(&Tensor::zeros(&[4, 4]), Pool2dParams::new(2)).is_err());
    let (y, idx) = max_pool2d(&x, Pool2dParams::new(2)).unwrap();
    // Indices of a 4x4 plane do not fit a 3x3 input.
    assert!(max_pool2d_backward(&y, &idx, &[1, 1, 3, 3]).is_err());
    let bad_idx = Tensor::from_vec_i64(vec![99; 4], &[1, 1, 2, 2]).unwrap();
    assert!(max_pool2d_backward(&y, &bad_idx, &[1, 1, 4, 4]).is_err());
}

#[test]
fn max_pool_propagates_nan_with_the_first_nan_index_as_pytorch_does() {
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = Tensor::from_vec(vec![
        1.0, 5.0, 2.0, nan,
        3.0, 4.0, nan, nan,
        7.0, 7.0, -1.0, -2.0,
        0.0, 7.0, -3.0, -0.5,
    ], &[1, 1, 4, 4]).unwrap();
    let p = tensor::Pool2dParams { kernel: [2, 2], stride: [2, 2], padding: [0, 0], ceil_mode: false };
    let (y, i) = tensor::max_pool2d(&x, p).unwrap();
    let y = y.to_vec_f32().unwrap();
    assert_eq!(y[0], 5.0);
    assert!(y[1].is_nan());
    assert_eq!(&y[2..], &[7.0, -0.5]);
    // The NaN window reports its first NaN (row-major); ties keep the first maximum.
    assert_eq!(i.to_vec_i64().unwrap(), vec![1, 3, 8, 15]);
    let v = tensor::max_pool2d_values(&x, p).unwrap().to_vec_f32().unwrap();
    assert_eq!((v[0], v[2], v[3]), (5.0, 7.0, -0.5));
    assert!(v[1].is_nan());
}

/// The values-only pooling on rows wide enough for its vector loops (the window maxima of a
/// row computed 16 and more at a time), NaNs included, at every vector extension this machine
/// has: ResNet's stem pooling (3x3, stride 2, padding 1), stride 1, a 2x2 window, a 3x2
/// window with stride (1, 3), ceil mode.
#[test]
fn max_pool_values_on_wide_rows_match_reference() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    let p = |kernel, stride, padding, ceil_mode| Pool2dParams { kernel, stride, padding, ceil_mode };
    let cases = [
        ([1, 3, 37, 70], p([3, 3], [2, 2], [1, 1], false)),
        ([2, 2, 20, 67], p([3, 3], [1, 1], [1, 1], false)),
        ([1, 2, 16, 64], p([2, 2], [2, 2], [0, 0], false)),
        ([1, 2, 11, 101], p([3, 2], [1, 3], [1, 1], true)),
    ];
    for (i, (xs, p)) in cases.into_iter().enumerate() {
        let mut data = randn(&xs, 90 + i as u64).to_vec_f32().unwrap();
        for at in [5, 77, data.len() / 2, data.len() - 1] {
            data[at] = f32::NAN;
        }
        let x = Tensor::from_vec(data, &xs).unwrap();
        let (want, _, os) = reference::max_pool2d(&f64s(&x), xs, p);
        for level in available_simd_levels() {
            set_simd_level(Some(level));
            let y = max_pool2d_values(&x, p).unwrap();
            assert_eq!(y.shape(), &os[..]);
            for (j, (&got, &want)) in y.to_vec_f32().unwrap().iter().zip(&want).enumerate() {
                assert!(
                    got as f64 == want || (got.is_nan() && want.is_nan()),
                    "{xs:?} {p:?} at {level}, output {j}: {got} vs {want}"
                );
            }
        }
    }
    set_simd_level(None);
}

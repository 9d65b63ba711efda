//! conv2d forward and backward against the direct-loop oracle (`tensor::reference`): proptest
//! over random geometries (stride, padding, dilation, groups, 1x1, odd sizes, batch 1), finite
//! differences for the backwards, and the adjoint (dot-product) identity on shapes large enough
//! to use several tiles and both parallel strategies.

mod common;
use common::*;
use proptest::prelude::*;
use tensor::{
    conv2d, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, reference, Conv2dParams, Tensor,
};

#[derive(Debug, Clone)]
struct Case {
    x: [usize; 4],
    w: [usize; 4],
    p: Conv2dParams,
    bias: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=4, 1usize..=3, 1usize..=3),
        (1usize..=9, 1usize..=9, 1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3, 0usize..=2, 0usize..=2, 1usize..=2, 1usize..=2),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "kernel larger than padded input",
            |((n, groups, cin_g, cout_g), (h, w, kh, kw), (sh, sw, ph, pw, dh, dw), bias, seed)| {
                let p = Conv2dParams { stride: [sh, sw], padding: [ph, pw], dilation: [dh, dw], groups };
                let fits = h + 2 * ph > dh * (kh - 1) && w + 2 * pw > dw * (kw - 1);
                fits.then_some(Case {
                    x: [n, groups * cin_g, h, w],
                    w: [groups * cout_g, cin_g, kh, kw],
                    p,
                    bias,
                    seed,
                })
            },
        )
}

fn run_reference(c: &Case, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    reference::conv2d(x, c.x, w, c.w, b, c.p).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn forward_matches_reference(c in case()) {
        let x = randn(&c.x, c.seed);
        let w = randn(&c.w, c.seed + 1);
        let b = c.bias.then(|| randn(&[c.w[0]], c.seed + 2));
        let want = run_reference(&c, &f64s(&x), &f64s(&w), b.as_ref().map(f64s).as_deref());
        for threads in [1, 3] {
            let got = with_threads(threads, || conv2d(&x, &w, b.as_ref(), c.p)).unwrap();
            assert_close(&format!("{c:?} forward ({threads} threads)"), &got.to_vec_f32().unwrap(), &want, 1e-5);
        }
    }

    #[test]
    fn backwards_match_finite_differences(c in case()) {
        let x = randn(&c.x, c.seed);
        let w = randn(&c.w, c.seed + 1);
        let out_shape = tensor::conv2d_output_shape(&c.x, &c.w, c.p).unwrap();
        let gy = randn(&out_shape, c.seed + 3);
        let (xf, wf, gyf) = (f64s(&x), f64s(&w), f64s(&gy));
        let loss_x = |xv: &[f64]| run_reference(&c, xv, &wf, None).iter().zip(&gyf).map(|(a, b)| a * b).sum::<f64>();
        let loss_w = |wv: &[f64]| run_reference(&c, &xf, wv, None).iter().zip(&gyf).map(|(a, b)| a * b).sum::<f64>();
        let gx = conv2d_backward_input(&gy, &w, &c.x, c.p).unwrap();
        let gw = conv2d_backward_weight(&x, &gy, &c.w, c.p).unwrap();
        assert_close(&format!("{c:?} grad input"), &gx.to_vec_f32().unwrap(), &finite_diff(&xf, 1e-3, loss_x), 1e-4);
        assert_close(&format!("{c:?} grad weight"), &gw.to_vec_f32().unwrap(), &finite_diff(&wf, 1e-3, loss_w), 1e-4);
        let gb = conv2d_backward_bias(&gy).unwrap();
        let want_gb: Vec<f64> = (0..c.w[0]).map(|co| {
            (0..out_shape[0]).map(|n| (0..out_shape[2] * out_shape[3]).map(|k| gyf[(n * c.w[0] + co) * out_shape[2] * out_shape[3] + k]).sum::<f64>()).sum()
        }).collect();
        assert_close("grad bias", &gb.to_vec_f32().unwrap(), &want_gb, 1e-5);
    }
}

/// Shapes big enough for several im2col tiles per image, under 1 and 4 threads (the
/// parallel-GEMM and the parallel-items strategies; the GEMM's blocks per thread), checked by the adjoint identities
/// `<conv(x, w), g> = <x, dX(g)> = <w, dW(x, g)>` and the oracle.
#[test]
fn multi_tile_shapes_match_reference_and_adjoints() {
    let cases = [
        ([1, 64, 33, 31], [16, 64, 3, 3], Conv2dParams::new().padding(1)),
        ([3, 64, 30, 30], [32, 16, 3, 3], Conv2dParams::new().padding(1).stride(2).groups(4)),
        ([2, 128, 20, 20], [32, 128, 1, 1], Conv2dParams::new()),
        ([2, 3, 64, 64], [8, 3, 7, 7], Conv2dParams::new().padding(3).stride(2)),
        ([2, 128, 24, 24], [128, 4, 3, 3], Conv2dParams::new().padding(1).groups(32)),
        ([1, 64, 12, 12], [64, 2, 1, 1], Conv2dParams::new().groups(32)),
        // Batch 1, one tile: im2col shared out by channels, the GEMM by bands of output rows.
        ([1, 96, 29, 29], [96, 96, 3, 3], Conv2dParams::new().padding(1).stride(2)),
        ([1, 256, 14, 14], [256, 256, 3, 3], Conv2dParams::new().padding(1)),
    ];
    for (xs, ws, p) in cases {
        let x = randn(&xs, 10);
        let w = randn(&ws, 11);
        let want = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, None, p).0;
        for threads in [1, 4] {
            let y = with_threads(threads, || conv2d(&x, &w, None, p)).unwrap();
            assert_close(&format!("{xs:?} {ws:?} forward"), &y.to_vec_f32().unwrap(), &want, 1e-5);
            let g = randn(y.shape(), 12);
            let dx = with_threads(threads, || conv2d_backward_input(&g, &w, &xs, p)).unwrap();
            let dw = with_threads(threads, || conv2d_backward_weight(&x, &g, &ws, p)).unwrap();
            let lhs = dot(&y.to_vec_f32().unwrap(), &g.to_vec_f32().unwrap());
            let via_x = dot(&x.to_vec_f32().unwrap(), &dx.to_vec_f32().unwrap());
            let via_w = dot(&w.to_vec_f32().unwrap(), &dw.to_vec_f32().unwrap());
            let tol = 1e-4 * lhs.abs().max(1.0) * 10.0;
            assert!((lhs - via_x).abs() < tol, "{xs:?}: <y,g>={lhs} <x,dx>={via_x}");
            assert!((lhs - via_w).abs() < tol, "{xs:?}: <y,g>={lhs} <w,dw>={via_w}");
        }
    }
}

#[test]
fn strided_input_views_are_accepted() {
    let x = randn(&[2, 3, 6, 5], 1).permute(&[0, 1, 3, 2]).unwrap();
    let w = randn(&[2, 3, 3, 3], 2);
    let y = conv2d(&x, &w, None, Conv2dParams::new()).unwrap();
    let want =
        reference::conv2d(&f64s(&x.contiguous()), [2, 3, 5, 6], &f64s(&w), [2, 3, 3, 3], None, Conv2dParams::new()).0;
    assert_close("permuted input", &y.to_vec_f32().unwrap(), &want, 1e-5);
}

#[test]
fn bad_shapes_are_errors_naming_the_shapes() {
    let x = Tensor::zeros(&[1, 4, 5, 5]);
    let e = conv2d(&x, &Tensor::zeros(&[2, 3, 3, 3]), None, Conv2dParams::new()).unwrap_err();
    assert!(e.to_string().contains("[1, 4, 5, 5]") && e.to_string().contains("[2, 3, 3, 3]"), "{e}");
    let e = conv2d(&x, &Tensor::zeros(&[2, 4, 7, 7]), None, Conv2dParams::new()).unwrap_err();
    assert!(e.to_string().contains("smaller than the kernel"), "{e}");
    assert!(conv2d(&x, &Tensor::zeros(&[4, 2, 3, 3]), None, Conv2dParams::new().groups(3)).is_err());
    assert!(conv2d(&x, &Tensor::zeros(&[2, 4, 1, 1]), None, Conv2dParams::new().stride(0)).is_err());
    assert!(conv2d(&x, &Tensor::zeros(&[2, 4, 1, 1]), Some(&Tensor::zeros(&[3])), Conv2dParams::new()).is_err());
    assert!(conv2d(&Tensor::zeros(&[4, 5, 5]), &Tensor::zeros(&[2, 4, 1, 1]), None, Conv2dParams::new()).is_err());
    assert!(conv2d(&x.to_dtype(tensor::DType::I64), &Tensor::zeros(&[2, 4, 1, 1]), None, Conv2dParams::new()).is_err());
}

/// Stride-1 3x3 convolutions with enough 4x4 output tiles take the Winograd F(4x4, 3x3) path:
/// random sizes (edges that cut tiles, padding 0-2, channel counts that are not multiples of
/// anything), the fused epilogue, 1 and 3 threads, against the f64 oracle.
fn winograd_case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize, bool, u64)> {
    (1usize..=3, 1usize..=40, 1usize..=40, 10usize..=30, 10usize..=30, 0usize..=2, any::<bool>(), any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn winograd_forward_matches_reference((n, cin, cout, h, w, pad, fused, seed) in winograd_case()) {
        let x = randn(&[n, cin, h, w], seed);
        let wt = randn(&[cout, cin, 3, 3], seed + 1);
        let b = randn(&[cout], seed + 2);
        let p = Conv2dParams::new().padding(pad);
        let (want, shape) = reference::conv2d(&f64s(&x), [n, cin, h, w], &f64s(&wt), [cout, cin, 3, 3], Some(&f64s(&b)), p);
        let residual = randn(&shape, seed + 3);
        let want: Vec<f64> = if fused {
            want.iter().zip(f64s(&residual)).map(|(&y, r)| (y + r).max(0.0)).collect()
        } else {
            want
        };
        for threads in [1, 3] {
            let got = with_threads(threads, || {
                if fused {
                    tensor::conv2d_fused(&x, &wt, Some(&b), p, Some(&residual), true)
                } else {
                    conv2d(&x, &wt, Some(&b), p)
                }
            })
            .unwrap();
            assert_eq!(got.shape(), &shape);
            assert_close(&format!("{n}x{cin}x{h}x{w} -> {cout}, pad {pad} ({threads} threads)"), &got.to_vec_f32().unwrap(), &want, 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `conv2d_affine` (an evaluation batch norm as the epilogue: `* scale + shift`, then the
    /// residual and ReLU) on every forward path — Winograd (stride-1 3x3, large maps), im2col,
    /// whole-image blocks (small maps), the direct grouped conv — against the f64 oracle.
    #[test]
    fn affine_epilogue_matches_reference(
        n in 1usize..=3, cin_g in 1usize..=12, cout_g in 1usize..=12, groups in 1usize..=4, size in 3usize..=24,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..=2, residual in any::<bool>(), relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (cin, cout) = (cin_g * groups, cout_g * groups);
        let x = randn(&[n, cin, size, size], seed);
        let wt = randn(&[cout, cin_g, k, k], seed + 1);
        let (scale, shift) = (randn(&[cout], seed + 2), randn(&[cout], seed + 3));
        let p = Conv2dParams::new().padding(k / 2).stride(stride).groups(groups);
        let (conv, shape) = reference::conv2d(&f64s(&x), [n, cin, size, size], &f64s(&wt), [cout, cin_g, k, k], None, p);
        let res = randn(&shape, seed + 4);
        let (sc, sh, r) = (f64s(&scale), f64s(&shift), f64s(&res));
        let plane = shape[2] * shape[3];
        let want: Vec<f64> = conv
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let c = (i / plane) % cout;
                let v = y * sc[c] + sh[c] + if residual { r[i] } else { 0.0 };
                if relu { v.max(0.0) } else { v }
            })
            .collect();
        let got = tensor::conv2d_affine(&x, &wt, &scale, &shift, p, residual.then_some(&res), relu).unwrap();
        assert_eq!(got.shape(), &shape);
        assert_close(&format!("{n}x{cin}x{size}x{size} -> {cout}, k {k}, stride {stride}, groups {groups}"), &got.to_vec_f32().unwrap(), &want, 1e-5);
    }
}

#[test]
fn affine_epilogue_refuses_a_scale_of_the_wrong_length() {
    let (x, w) = (Tensor::zeros(&[1, 4, 5, 5]), Tensor::zeros(&[2, 4, 1, 1]));
    let err =
        tensor::conv2d_affine(&x, &w, &Tensor::zeros(&[3]), &Tensor::zeros(&[2]), Conv2dParams::new(), None, false);
    assert!(err.unwrap_err().to_string().contains("scale"));
}

/// `dx[n, ci, y, x] = sum over co, ki, kj of dy[n, co, y - ki + pad, x - kj + pad] w[co, ci, ki, kj]`
/// for a stride-1 3x3 conv, by direct loops in f64.
fn grad_input_3x3(dy: &[f64], w: &[f64], [n, cin, h, wd]: [usize; 4], cout: usize, pad: usize) -> Vec<f64> {
    let (oh, ow) = (h + 2 * pad - 2, wd + 2 * pad - 2);
    let mut dx = vec![0f64; n * cin * h * wd];
    for b in 0..n {
        for ci in 0..cin {
            for y in 0..h {
                for x in 0..wd {
                    let mut acc = 0f64;
                    for co in 0..cout {
                        for ki in 0..3 {
                            for kj in 0..3 {
                                let (oy, ox) = ((y + pad) as isize - ki as isize, (x + pad) as isize - kj as isize);
                                if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                    acc += dy[((b * cout + co) * oh + oy as usize) * ow + ox as usize]
                                        * w[((co * cin + ci) * 3 + ki) * 3 + kj];
                                }
                            }
                        }
                    }
                    dx[((b * cin + ci) * h + y) * wd + x] = acc;
                }
            }
        }
    }
    dx
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The input gradient of a stride-1 3x3 conv is computed as a Winograd conv of the output
    /// gradient with the flipped kernel.
    #[test]
    fn winograd_grad_input_matches_direct_loops((n, cin, cout, h, w, pad, _fused, seed) in winograd_case()) {
        let wt = randn(&[cout, cin, 3, 3], seed + 1);
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let dy = randn(&[n, cout, oh, ow], seed + 4);
        let want = grad_input_3x3(&f64s(&dy), &f64s(&wt), [n, cin, h, w], cout, pad);
        for threads in [1, 3] {
            let got = with_threads(threads, || conv2d_backward_input(&dy, &wt, &[n, cin, h, w], Conv2dParams::new().padding(pad)))
                .unwrap();
            assert_close(&format!("{n}x{cin}x{h}x{w} <- {cout}, pad {pad} ({threads} threads)"), &got.to_vec_f32().unwrap(), &want, 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Batches of small images are computed in blocks of whole images (one GEMM over all their
    /// columns): the forward pass against the oracle, and both gradients against the same
    /// computation done one image at a time (the path the finite-difference tests check).
    #[test]
    fn batches_of_small_images_match_per_image_results(
        (n, groups, cin_g, cout_g) in (4usize..=12, 1usize..=2, 1usize..=5, 1usize..=5),
        (h, w, k, stride, pad) in (2usize..=9, 2usize..=9, 1usize..=3, 1usize..=2, 0usize..=1),
        seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let xs = [n, groups * cin_g, h, w];
        let ws = [groups * cout_g, cin_g, k, k];
        let p = Conv2dParams::new().stride(stride).padding(pad).groups(groups);
        let x = randn(&xs, seed);
        let wt = randn(&ws, seed + 1);
        let want = reference::conv2d(&f64s(&x), xs, &f64s(&wt), ws, None, p).0;
        for threads in [1, 2] {
            let y = with_threads(threads, || conv2d(&x, &wt, None, p)).unwrap();
            assert_close(&format!("{xs:?} {ws:?} {p:?} forward"), &y.to_vec_f32().unwrap(), &want, 1e-5);
            let dy = randn(y.shape(), seed + 2);
            let dx = with_threads(threads, || conv2d_backward_input(&dy, &wt, &xs, p)).unwrap();
            let dw = with_threads(threads, || conv2d_backward_weight(&x, &dy, &ws, p)).unwrap();
            let (mut dx_one, mut dw_sum) = (Vec::new(), vec![0f64; dw.numel()]);
            for i in 0..n {
                let xi = x.narrow(0, i, 1).unwrap().contiguous();
                let dyi = dy.narrow(0, i, 1).unwrap().contiguous();
                let one = [1, xs[1], h, w];
                dx_one.extend(f64s(&conv2d_backward_input(&dyi, &wt, &one, p).unwrap()));
                let dwi = f64s(&conv2d_backward_weight(&xi, &dyi, &ws, p).unwrap());
                dw_sum.iter_mut().zip(dwi).for_each(|(a, b)| *a += b);
            }
            assert_close(&format!("{xs:?} {ws:?} {p:?} grad input"), &dx.to_vec_f32().unwrap(), &dx_one, 1e-5);
            assert_close(&format!("{xs:?} {ws:?} {p:?} grad weight"), &dw.to_vec_f32().unwrap(), &dw_sum, 1e-5);
        }
    }
}

/// `PreparedConv` (fixed weights, transforms kept) against the oracle with its epilogue: a
/// batch-1 3x3 conv with few tiles takes Winograd only when the transform is kept (16 tiles
/// at 14x14 and 4 at 7x7 here), with its transforms and products shared out across threads.
#[test]
fn prepared_convs_with_few_tiles_match_reference() {
    for (c, hw) in [(48usize, 14usize), (40, 7), (24, 5)] {
        let xs = [1, c, hw, hw];
        let ws = [c, c, 3, 3];
        let (x, w, b, r) = (randn(&xs, 20), randn(&ws, 21), randn(&[c], 22), randn(&xs, 23));
        let p = Conv2dParams::new().padding(1);
        let (want, _) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, Some(&f64s(&b)), p);
        let want: Vec<f64> = want.iter().zip(f64s(&r)).map(|(y, r)| (y + r).max(0.0)).collect();
        let conv = tensor::PreparedConv::new(w, Some(b), p).unwrap();
        for threads in [1, 4] {
            for _ in 0..2 {
                // Twice: the first call computes the kept transform, the second uses it.
                let y = with_threads(threads, || conv.forward(&x, Some(&r), true)).unwrap();
                assert_close(&format!("{xs:?} prepared ({threads} threads)"), &y.to_vec_f32().unwrap(), &want, 1e-4);
            }
        }
    }
}

/// Full-width Winograd layers (ResNet's 256- and 512-channel stages), per call and prepared,
/// against the f64 oracle: the proptests above use at most 40 channels, where a sum over 4608
/// products (512 channels x 9 taps) would show an accumulation error they cannot.
#[test]
fn full_width_winograd_layers_match_reference() {
    // (channels, batch, map): the per-call path needs 32 tiles; prepared convs take 4.
    for (c, n, hw, prepared) in
        [(256usize, 1usize, 28usize, false), (512, 2, 14, false), (256, 1, 14, true), (512, 1, 7, true)]
    {
        let xs = [n, c, hw, hw];
        let ws = [c, c, 3, 3];
        let x = randn(&xs, 30);
        // Kaiming-scaled weights, as a trained layer's are: outputs of the input's magnitude.
        let w = randn(&ws, 31).mul_scalar((2.0 / (9.0 * c as f64)).sqrt() as f32).unwrap();
        let b = randn(&[c], 32);
        let p = Conv2dParams::new().padding(1);
        let (want, _) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, Some(&f64s(&b)), p);
        let got = if prepared {
            tensor::PreparedConv::new(w, Some(b), p).unwrap().forward(&x, None, false).unwrap()
        } else {
            conv2d(&x, &w, Some(&b), p).unwrap()
        };
        let what = format!("{xs:?} {}", if prepared { "prepared" } else { "per call" });
        assert_close(&what, &got.to_vec_f32().unwrap(), &want, 1e-4);
    }
}

/// Every hand-written kernel at every vector extension this machine has (`tensor::simd`):
/// Winograd (forward, input gradient, prepared), the direct grouped convolution (ResNeXt's
/// 32 groups of 4), and the small products of narrow maps, each against the f64 oracle — so
/// an AVX-512 machine also tests the AVX2 and portable code.
#[test]
fn every_simd_level_matches_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level, simd_level};
    let p1 = Conv2dParams::new().padding(1);
    let shapes: [([usize; 4], [usize; 4], Conv2dParams); 4] = [
        ([2, 24, 20, 20], [24, 24, 3, 3], p1),             // Winograd, per call
        ([1, 128, 14, 14], [128, 4, 3, 3], p1.groups(32)), // direct grouped
        ([2, 8, 5, 5], [6, 8, 3, 3], p1),                  // small products
        ([1, 16, 9, 9], [8, 16, 1, 1], Conv2dParams::new()),
    ];
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        assert_eq!(simd_level(), level);
        for (i, (xs, ws, p)) in shapes.iter().enumerate() {
            let (x, w, b) = (randn(xs, 40 + i as u64), randn(ws, 50 + i as u64), randn(&[ws[0]], 60 + i as u64));
            let (want, ys) = reference::conv2d(&f64s(&x), *xs, &f64s(&w), *ws, Some(&f64s(&b)), *p);
            let got = conv2d(&x, &w, Some(&b), *p).unwrap();
            assert_close(&format!("{xs:?} * {ws:?} at {level}"), &got.to_vec_f32().unwrap(), &want, 1e-5);
            // The input gradient against the forward pass's adjoint: <conv(x), dy> = <x, dx>.
            let dy = randn(&ys, 70 + i as u64);
            let dx = conv2d_backward_input(&dy, &w, xs, *p).unwrap();
            let y = conv2d(&x, &w, None, *p).unwrap();
            let lhs: f64 = f64s(&y).iter().zip(f64s(&dy)).map(|(a, b)| a * b).sum();
            let rhs: f64 = f64s(&x).iter().zip(f64s(&dx)).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{xs:?} adjoint at {level}: {lhs} vs {rhs}");
        }
        // A prepared conv with few tiles (batch-1 inference's Winograd path).
        let (xs, ws) = ([1, 48, 14, 14], [48, 48, 3, 3]);
        let (x, w) = (randn(&xs, 80), randn(&ws, 81));
        let (want, _) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, None, p1);
        let y = tensor::PreparedConv::new(w, None, p1).unwrap().forward(&x, None, false).unwrap();
        assert_close(&format!("prepared at {level}"), &y.to_vec_f32().unwrap(), &want, 1e-4);
    }
    set_simd_level(None);
}

/// The kernel gradient of an ungrouped stride-1 conv from its definition, in f64:
/// `dW[co, ci, a, b] = Σ_n Σ_(i, j) dy[n, co, i, j] x[n, ci, i + a - pad, j + b - pad]`.
fn weight_grad_f64(x: &[f64], xs: [usize; 4], dy: &[f64], ws: [usize; 4], pad: usize) -> Vec<f64> {
    let ([n, cin, h, w], [cout, _, kh, kw]) = (xs, ws);
    let (oh, ow) = (h + 2 * pad - kh + 1, w + 2 * pad - kw + 1);
    let mut dw = vec![0.0; cout * cin * kh * kw];
    for ni in 0..n {
        for co in 0..cout {
            for ci in 0..cin {
                for a in 0..kh {
                    for b in 0..kw {
                        let mut s = 0.0;
                        for i in 0..oh {
                            for j in 0..ow {
                                let (r, c) = ((i + a) as isize - pad as isize, (j + b) as isize - pad as isize);
                                if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                                    s += dy[((ni * cout + co) * oh + i) * ow + j]
                                        * x[((ni * cin + ci) * h + r as usize) * w + c as usize];
                                }
                            }
                        }
                        dw[((co * cin + ci) * kh + a) * kw + b] += s;
                    }
                }
            }
        }
    }
    dw
}

/// The Winograd kernel gradient (stride-1 3x3 convs with at least 128 4x4 output tiles per
/// thread, as these shapes have under 1 and 2 threads): partial tiles at the maps' edges, no
/// padding, channel counts that leave lanes of the eight-tile transforms empty, at every vector
/// extension this machine has, against the definition in f64.
#[test]
fn winograd_weight_gradient_matches_the_definition() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    let cases =
        [([8, 6, 27, 26], [5, 6, 3, 3], 1), ([10, 17, 19, 21], [9, 17, 3, 3], 1), ([8, 4, 30, 30], [8, 4, 3, 3], 0)];
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        for (i, (xs, ws, pad)) in cases.into_iter().enumerate() {
            let p = Conv2dParams::new().padding(pad);
            let x = randn(&xs, 100 + i as u64);
            let ys = tensor::conv2d_output_shape(&xs, &ws, p).unwrap();
            let dy = randn(&ys, 110 + i as u64);
            let want = weight_grad_f64(&f64s(&x), xs, &f64s(&dy), ws, pad);
            for threads in [1, 2] {
                let dw = with_threads(threads, || conv2d_backward_weight(&x, &dy, &ws, p)).unwrap();
                assert_close(
                    &format!("{xs:?} {ws:?} pad {pad}, {threads} threads, {level}"),
                    &dw.to_vec_f32().unwrap(),
                    &want,
                    1e-4,
                );
            }
        }
    }
    set_simd_level(None);
}

/// Convolutions with few input channels (the stem: 3 channels, 7x7, stride 2), which take a
/// direct AVX-512 kernel where the CPU has it, at every vector extension this machine has, with
/// every epilogue (`* scale + shift`, residual, ReLU), against the f64 oracle: one image at a
/// time (blocks of rows and channels shared out) and whole images per thread; output channels,
/// rows and columns that do not fill a register block.
#[test]
fn few_input_channel_convs_match_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    let shapes: [([usize; 4], [usize; 4], usize, usize); 5] = [
        ([1, 3, 23, 37], [10, 3, 7, 7], 2, 3),
        ([7, 3, 16, 16], [8, 3, 7, 7], 2, 3),
        ([1, 1, 9, 40], [5, 1, 3, 3], 1, 1),
        ([2, 4, 13, 11], [4, 4, 5, 5], 2, 2),
        ([1, 2, 6, 5], [3, 2, 3, 3], 1, 0),
    ];
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        for (i, &(xs, ws, stride, pad)) in shapes.iter().enumerate() {
            let seed = 90 + 10 * i as u64;
            let (x, w) = (randn(&xs, seed), randn(&ws, seed + 1));
            let (scale, shift) = (randn(&[ws[0]], seed + 2), randn(&[ws[0]], seed + 3));
            let p = Conv2dParams::new().stride(stride).padding(pad);
            let (conv, ys) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, None, p);
            let res = randn(&ys, seed + 4);
            let (sc, sh, r) = (f64s(&scale), f64s(&shift), f64s(&res));
            let plane = ys[2] * ys[3];
            let got = with_threads(2, || conv2d(&x, &w, None, p)).unwrap();
            assert_close(&format!("{xs:?} * {ws:?} at {level}"), &got.to_vec_f32().unwrap(), &conv, 1e-5);
            let want: Vec<f64> = conv
                .iter()
                .enumerate()
                .map(|(j, &y)| (y * sc[(j / plane) % ws[0]] + sh[(j / plane) % ws[0]] + r[j]).max(0.0))
                .collect();
            let got = with_threads(2, || tensor::conv2d_affine(&x, &w, &scale, &shift, p, Some(&res), true)).unwrap();
            assert_close(&format!("{xs:?} * {ws:?} affine at {level}"), &got.to_vec_f32().unwrap(), &want, 1e-5);
        }
    }
    set_simd_level(None);
}

/// Prepared 1x1 and im2col convolutions through the packed AVX-512 product (`kernels/packed.rs`
/// on AVX-512; the `gemm` path below it) against the f64 oracle, with and without the epilogue:
/// output channels that do not fill a 32-channel panel, positions that do not fill a 14-wide
/// block, the threads splitting by channels and by positions (im2col rows built per slice of
/// depth), depths split into several passes, and whole images per thread at batch 5; the
/// taps read straight from the image when the threads split the positions — blocks across two
/// output rows, a kernel row's taps picked from one load (stride 2, dilation 2, 5x5), one tap
/// at a time (7x7 at stride 2) and value by value (stride 3).
#[test]
fn prepared_packed_convs_match_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    // (input, weight, stride, padding, dilation)
    type Shape = ([usize; 4], [usize; 4], usize, usize, usize);
    let shapes: [Shape; 11] = [
        ([1, 128, 9, 9], [130, 128, 1, 1], 1, 0, 1), // channels split, 81 = 5 x 14 + 11
        ([1, 128, 20, 20], [128, 128, 1, 1], 1, 0, 1), // positions split
        ([1, 64, 15, 15], [160, 64, 3, 3], 2, 1, 1), // im2col
        ([1, 600, 19, 19], [128, 600, 3, 3], 2, 1, 1), // 5400 deep: several passes
        ([5, 136, 7, 7], [128, 136, 1, 1], 2, 0, 1), // strided 1x1, whole images
        ([1, 64, 40, 40], [128, 64, 3, 3], 2, 1, 1), // positions split, taps from the image
        ([1, 64, 33, 31], [128, 64, 3, 3], 1, 2, 2), // dilated
        ([1, 16, 31, 31], [128, 16, 5, 5], 2, 2, 1), // 5x5
        ([1, 5, 60, 60], [128, 5, 7, 7], 2, 3, 1),   // 7x7 stride 2: one tap per load
        ([1, 128, 40, 40], [128, 128, 3, 3], 3, 1, 1), // stride 3: value by value
        ([1, 136, 9, 9], [130, 136, 1, 1], 2, 0, 1), // strided 1x1, channels split: subsampled once
    ];
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        for (i, &(xs, ws, stride, pad, dilation)) in shapes.iter().enumerate() {
            let seed = 200 + 10 * i as u64;
            let (x, w, b) = (randn(&xs, seed), randn(&ws, seed + 1), randn(&[ws[0]], seed + 2));
            let p = Conv2dParams::new().stride(stride).padding(pad).dilation(dilation);
            let (conv, ys) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, Some(&f64s(&b)), p);
            let res = randn(&ys, seed + 3);
            let with_res: Vec<f64> = conv.iter().zip(f64s(&res)).map(|(y, r)| (y + r).max(0.0)).collect();
            let prepared = tensor::PreparedConv::new(w, Some(b), p).unwrap();
            for threads in [1, 2, 4] {
                let what = format!("{xs:?} * {ws:?} at {level}, {threads} threads");
                let got = with_threads(threads, || prepared.forward(&x, None, false)).unwrap();
                assert_close(&what, &got.to_vec_f32().unwrap(), &conv, 1e-4);
                let got = with_threads(threads, || prepared.forward(&x, Some(&res), true)).unwrap();
                assert_close(&format!("{what}, residual + ReLU"), &got.to_vec_f32().unwrap(), &with_res, 1e-4);
            }
        }
    }
    set_simd_level(None);
}

/// Both gradients of any ungrouped conv from the definition, in f64: every (output, tap) pair
/// whose input position lies inside the map adds `w * dy` to `dx` and `x * dy` to `dw`.
fn conv_grads_f64(x: &[f64], xs: [usize; 4], w: &[f64], ws: [usize; 4], dy: &[f64], p: Conv2dParams) -> [Vec<f64>; 2] {
    let ([n, cin, h, wd], [cout, _, kh, kw]) = (xs, ws);
    let [_, _, oh, ow] = tensor::conv2d_output_shape(&xs, &ws, p).unwrap();
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    for (ni, co, oy, ox) in
        (0..n).flat_map(|a| (0..cout).flat_map(move |b| (0..oh).flat_map(move |c| (0..ow).map(move |d| (a, b, c, d)))))
    {
        let g = dy[((ni * cout + co) * oh + oy) * ow + ox];
        for (ci, ky, kx) in (0..cin).flat_map(|a| (0..kh).flat_map(move |b| (0..kw).map(move |c| (a, b, c)))) {
            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
            let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                continue;
            }
            let (xi, wi) =
                (((ni * cin + ci) * h + iy as usize) * wd + ix as usize, ((co * cin + ci) * kh + ky) * kw + kx);
            dx[xi] += w[wi] * g;
            dw[wi] += x[xi] * g;
        }
    }
    [dx, dw]
}

/// Convolutions over maps smaller than their kernel (ResNet's last stage on 64-pixel pictures:
/// 3x3 on 2x2), which run as one dense layer (`kernels/dense.rs`) at batch 16 and over: forward
/// with the epilogue, input and weight gradients, against the definition in f64; a strided one,
/// a 1x1 map (the centre tap alone), a rectangular kernel, channel counts that split into
/// uneven blocks and partial 16-channel tiles, one thread and two, at every vector extension
/// this machine has (AVX-512 gathers the taps).
#[test]
fn convs_over_maps_smaller_than_the_kernel_match_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    let cases: [([usize; 4], [usize; 4], Conv2dParams); 5] = [
        ([16, 24, 2, 2], [20, 24, 3, 3], Conv2dParams::new().padding(1)),
        ([17, 10, 1, 1], [12, 10, 3, 3], Conv2dParams::new().padding(1)),
        ([16, 6, 2, 2], [7, 6, 3, 3], Conv2dParams::new().padding(1).stride(2)),
        ([16, 5, 1, 2], [6, 5, 1, 3], Conv2dParams { padding: [0, 1], ..Conv2dParams::new() }),
        ([20, 300, 2, 2], [520, 300, 3, 3], Conv2dParams::new().padding(1)),
    ];
    for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        let (x, w, b) = (randn(&xs, seed), randn(&ws, seed + 1), randn(&[ws[0]], seed + 2));
        let (scale, shift) = (randn(&[ws[0]], seed + 3), randn(&[ws[0]], seed + 4));
        let (conv, ys) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, None, p);
        let (res, dy) = (randn(&ys, seed + 5), randn(&ys, seed + 6));
        let plane = ys[2] * ys[3];
        let (bf, sc, sh, r) = (f64s(&b), f64s(&scale), f64s(&shift), f64s(&res));
        let with_bias: Vec<f64> = conv.iter().enumerate().map(|(j, y)| y + bf[(j / plane) % ws[0]]).collect();
        let affine: Vec<f64> = conv
            .iter()
            .enumerate()
            .map(|(j, &y)| (y * sc[(j / plane) % ws[0]] + sh[(j / plane) % ws[0]] + r[j]).max(0.0))
            .collect();
        let [dx_want, dw_want] = conv_grads_f64(&f64s(&x), xs, &f64s(&w), ws, &f64s(&dy), p);
        for (level, threads) in available_simd_levels().into_iter().flat_map(|l| [(l, 1), (l, 2)]) {
            set_simd_level(Some(level));
            let what = format!("{xs:?} * {ws:?} {p:?}, {threads} threads, {level}");
            let got = with_threads(threads, || conv2d(&x, &w, Some(&b), p)).unwrap();
            assert_close(&format!("{what} forward"), &got.to_vec_f32().unwrap(), &with_bias, 1e-5);
            let got =
                with_threads(threads, || tensor::conv2d_affine(&x, &w, &scale, &shift, p, Some(&res), true)).unwrap();
            assert_close(&format!("{what} affine"), &got.to_vec_f32().unwrap(), &affine, 1e-5);
            let dx = with_threads(threads, || conv2d_backward_input(&dy, &w, &xs, p)).unwrap();
            assert_close(&format!("{what} input gradient"), &dx.to_vec_f32().unwrap(), &dx_want, 1e-5);
            let dw = with_threads(threads, || conv2d_backward_weight(&x, &dy, &ws, p)).unwrap();
            assert_close(&format!("{what} weight gradient"), &dw.to_vec_f32().unwrap(), &dw_want, 1e-5);
        }
    }
    set_simd_level(None);
}

/// Grouped convolutions through the direct kernel against the f64 oracle, at every vector
/// extension this machine has (the AVX-512 one flattens each phase plane into vectors): blocks
/// of 4 and of 8 output channels and a partial block (6 per group), blocks of 1 to 6 vectors,
/// maps of 7 and 30 columns, stride 2 in both axes and in one, stride 3 (planes filled by the
/// portable code), a 5x5 kernel, no padding, a 1x3 kernel, batch 2; per call and prepared,
/// with bias, residual and ReLU; one thread and two.
#[test]
fn grouped_convs_match_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    let p = |stride: [usize; 2], padding: [usize; 2], groups: usize| Conv2dParams {
        stride,
        padding,
        dilation: [1, 1],
        groups,
    };
    let cases: [([usize; 4], [usize; 4], Conv2dParams); 10] = [
        ([2, 32, 13, 11], [32, 4, 3, 3], p([1, 1], [1, 1], 8)),
        ([1, 64, 14, 14], [64, 8, 3, 3], p([2, 2], [1, 1], 8)),
        ([1, 128, 7, 7], [128, 16, 3, 3], p([1, 1], [1, 1], 8)),
        ([1, 24, 9, 9], [36, 4, 3, 3], p([1, 1], [1, 1], 6)),
        ([1, 16, 30, 30], [16, 4, 3, 3], p([1, 1], [1, 1], 4)),
        ([1, 32, 15, 16], [32, 8, 1, 3], p([1, 2], [0, 1], 4)),
        ([1, 32, 15, 16], [32, 8, 3, 3], p([2, 1], [1, 1], 4)),
        ([1, 32, 12, 12], [32, 8, 3, 3], p([3, 3], [1, 1], 4)),
        ([1, 32, 10, 10], [32, 4, 5, 5], p([1, 1], [2, 2], 8)),
        ([1, 32, 9, 9], [32, 8, 3, 3], p([1, 1], [0, 0], 4)),
    ];
    for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
        let seed = 400 + 10 * i as u64;
        let (x, w, b) = (randn(&xs, seed), randn(&ws, seed + 1), randn(&[ws[0]], seed + 2));
        let (conv, ys) = reference::conv2d(&f64s(&x), xs, &f64s(&w), ws, Some(&f64s(&b)), p);
        let res = randn(&ys, seed + 3);
        let with_res: Vec<f64> = conv.iter().zip(f64s(&res)).map(|(y, r)| (y + r).max(0.0)).collect();
        let prepared = tensor::PreparedConv::new(w.clone(), Some(b.clone()), p).unwrap();
        for (level, threads) in available_simd_levels().into_iter().flat_map(|l| [(l, 1), (l, 2)]) {
            set_simd_level(Some(level));
            let what = format!("{xs:?} * {ws:?} {p:?}, {threads} threads, {level}");
            let got = with_threads(threads, || conv2d(&x, &w, Some(&b), p)).unwrap();
            assert_close(&format!("{what} per call"), &got.to_vec_f32().unwrap(), &conv, 1e-5);
            let got = with_threads(threads, || prepared.forward(&x, Some(&res), true)).unwrap();
            assert_close(&format!("{what} prepared, residual + ReLU"), &got.to_vec_f32().unwrap(), &with_res, 1e-5);
        }
    }
    set_simd_level(None);
}

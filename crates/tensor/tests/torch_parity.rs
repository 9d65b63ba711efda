//! The kernels against PyTorch, from fixtures written by `fixtures/gen_torch_fixtures.py`
//! (torch 1.13, float64 reference values stored as f32).

mod common;
use common::*;
use tensor::*;

const TOL: f64 = 1e-5;

fn conv_case(name: &str, stride: [usize; 2], padding: [usize; 2], dilation: usize, groups: usize, bias: bool) {
    let f = |k: &str| fixture(&format!("{name}_{k}"));
    let (x, w, gy) = (f("x"), f("w"), f("gy"));
    let b = bias.then(|| f("b"));
    let p = Conv2dParams { stride, padding, dilation: [dilation, dilation], groups };
    assert_tensor_close(&format!("{name} y"), &conv2d(&x, &w, b.as_ref(), p).unwrap(), &f("y"), TOL);
    assert_tensor_close(&format!("{name} gx"), &conv2d_backward_input(&gy, &w, x.shape(), p).unwrap(), &f("gx"), TOL);
    assert_tensor_close(&format!("{name} gw"), &conv2d_backward_weight(&x, &gy, w.shape(), p).unwrap(), &f("gw"), TOL);
    if bias {
        assert_tensor_close(&format!("{name} gb"), &conv2d_backward_bias(&gy).unwrap(), &f("gb"), TOL);
    }
}

#[test]
fn conv2d_matches_torch() {
    conv_case("conv_3x3_p1", [1, 1], [1, 1], 1, 1, true);
    conv_case("conv_3x3_s2_g2", [2, 2], [1, 1], 1, 2, false);
    conv_case("conv_1x1", [1, 1], [0, 0], 1, 1, true);
    conv_case("conv_1x1_s2", [2, 2], [0, 0], 1, 1, false);
    conv_case("conv_3x3_d2", [1, 1], [2, 2], 2, 1, true);
    conv_case("conv_depthwise", [1, 1], [1, 1], 1, 8, false);
    conv_case("conv_stem_7x7_s2", [2, 2], [3, 3], 1, 1, false);
    conv_case("conv_grouped_4", [1, 2], [1, 0], 1, 4, true);
}

fn max_pool_case(name: &str, p: Pool2dParams) {
    let f = |k: &str| fixture(&format!("{name}_{k}"));
    let x = f("x");
    let (y, idx) = max_pool2d(&x, p).unwrap();
    assert_tensor_close(&format!("{name} y"), &y, &f("y"), 0.0);
    assert_eq!(idx.to_vec_i64().unwrap(), f("idx").to_vec_i64().unwrap(), "{name} indices");
    let gx = max_pool2d_backward(&f("gy"), &idx, x.shape()).unwrap();
    assert_tensor_close(&format!("{name} gx"), &gx, &f("gx"), TOL);
}

#[test]
fn max_pool2d_matches_torch() {
    max_pool_case("maxpool_k3s2p1", Pool2dParams::new(3).stride(2).padding(1));
    max_pool_case("maxpool_k2s2_ceil", Pool2dParams::new(2).ceil_mode(true));
}

#[test]
fn avg_pool2d_matches_torch() {
    for include_pad in [true, false] {
        for ceil in [false, true] {
            let name = format!("avgpool_k3s2p1_pad{}_ceil{}", include_pad as u8, ceil as u8);
            let f = |k: &str| fixture(&format!("{name}_{k}"));
            let x = f("x");
            let p = Pool2dParams::new(3).stride(2).padding(1).ceil_mode(ceil);
            assert_tensor_close(&format!("{name} y"), &avg_pool2d(&x, p, include_pad).unwrap(), &f("y"), TOL);
            let gx = avg_pool2d_backward(&f("gy"), x.shape(), p, include_pad).unwrap();
            assert_tensor_close(&format!("{name} gx"), &gx, &f("gx"), TOL);
        }
    }
}

#[test]
fn adaptive_avg_pool2d_matches_torch() {
    for (oh, ow) in [(1, 1), (3, 2)] {
        let name = format!("adaptive_{oh}x{ow}");
        let f = |k: &str| fixture(&format!("{name}_{k}"));
        let x = f("x");
        assert_tensor_close(&format!("{name} y"), &adaptive_avg_pool2d(&x, [oh, ow]).unwrap(), &f("y"), TOL);
        let gx = adaptive_avg_pool2d_backward(&f("gy"), x.shape()).unwrap();
        assert_tensor_close(&format!("{name} gx"), &gx, &f("gx"), TOL);
    }
}

#[test]
fn batch_norm_train_matches_torch() {
    let f = |k: &str| fixture(&format!("bn_{k}"));
    let (x, gamma, beta) = (f("x"), f("gamma"), f("beta"));
    let out = batch_norm_train(&x, Some(&gamma), Some(&beta), Some((&f("rm"), &f("rv"))), 0.1, 1e-5).unwrap();
    assert_tensor_close("bn train y", &out.output, &f("train_y"), TOL);
    assert_tensor_close("bn running mean", out.running_mean.as_ref().unwrap(), &f("train_rm_new"), TOL);
    assert_tensor_close("bn running var", out.running_var.as_ref().unwrap(), &f("train_rv_new"), TOL);
    let g = batch_norm_train_backward(&f("train_gy"), &x, Some(&gamma), &out.mean, &out.invstd).unwrap();
    assert_tensor_close("bn train gx", &g.input, &f("train_gx"), TOL);
    assert_tensor_close("bn train ggamma", &g.weight, &f("train_ggamma"), TOL);
    assert_tensor_close("bn train gbeta", &g.bias, &f("train_gbeta"), TOL);
}

#[test]
fn batch_norm_eval_matches_torch() {
    let f = |k: &str| fixture(&format!("bn_{k}"));
    let (x, gamma, beta, rm, rv) = (f("x"), f("gamma"), f("beta"), f("rm"), f("rv"));
    let y = batch_norm_eval(&x, Some(&gamma), Some(&beta), &rm, &rv, 1e-5).unwrap();
    assert_tensor_close("bn eval y", &y, &f("eval_y"), TOL);
    let g = batch_norm_eval_backward(&f("train_gy"), &x, Some(&gamma), &rm, &rv, 1e-5).unwrap();
    assert_tensor_close("bn eval gx", &g.input, &f("eval_gx"), TOL);
    assert_tensor_close("bn eval ggamma", &g.weight, &f("eval_ggamma"), TOL);
    assert_tensor_close("bn eval gbeta", &g.bias, &f("eval_gbeta"), TOL);
}

#[test]
fn softmax_and_matmul_match_torch() {
    let x = fixture("softmax_x");
    assert_tensor_close("softmax", &x.softmax(1).unwrap(), &fixture("softmax_y"), TOL);
    assert_tensor_close("log_softmax", &x.log_softmax(1).unwrap(), &fixture("log_softmax_y"), TOL);
    let y = fixture("matmul_a").matmul(&fixture("matmul_b")).unwrap();
    assert_tensor_close("batched matmul with broadcasting", &y, &fixture("matmul_y"), TOL);
}

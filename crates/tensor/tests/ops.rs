//! Tensor creation, views, broadcasting, reductions, softmax and matmul against hand-computed
//! values and the naive matmul oracle.

mod common;
use common::*;
use proptest::prelude::*;
use tensor::*;

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

#[test]
fn creation() {
    assert_eq!(Tensor::zeros(&[2, 3]).to_vec_f32().unwrap(), vec![0.0; 6]);
    assert_eq!(Tensor::full(&[2], 1.5).to_vec_f32().unwrap(), vec![1.5, 1.5]);
    assert_eq!(Tensor::arange(0.0, 1.0, 0.25).unwrap().to_vec_f32().unwrap(), vec![0.0, 0.25, 0.5, 0.75]);
    assert_eq!(Tensor::arange_i64(3).to_vec_i64().unwrap(), vec![0, 1, 2]);
    assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).unwrap_err().to_string().contains("5 values"));
    assert!(Tensor::arange(0.0, 1.0, 0.0).is_err());
    assert_eq!(Tensor::scalar(3.0).item().unwrap(), 3.0);
    assert!(Tensor::zeros(&[2]).item().is_err());
    assert_eq!(Tensor::zeros_on(&[1], Device::Cpu).unwrap().device(), Device::Cpu);
    assert!(Device::parse("cuda:7").is_err());
}

#[test]
fn views_share_data_and_copies_are_row_major() {
    let a = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 3, 4]).unwrap();
    let p = a.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert!(!p.is_contiguous());
    assert_eq!(p.get(&[1, 1, 2]).unwrap(), a.get(&[1, 2, 1]).unwrap());
    assert_eq!(p.contiguous().to_vec_f32().unwrap()[..4], [0.0, 4.0, 8.0, 12.0]);
    let tr = a.transpose(1, 2).unwrap();
    assert_eq!(tr.get(&[0, 3, 1]).unwrap(), 7.0);
    let n = a.narrow(2, 1, 2).unwrap();
    assert_eq!(n.shape(), &[2, 3, 2]);
    assert_eq!(n.to_vec_f32().unwrap()[..4], [1.0, 2.0, 5.0, 6.0]);
    assert_eq!(n.reshape(&[12]).unwrap().to_vec_f32().unwrap()[..3], [1.0, 2.0, 5.0]);
    assert!(a.narrow(2, 3, 2).is_err());
    assert!(a.permute(&[0, 0, 1]).is_err());
    assert!(a.reshape(&[5, 5]).is_err());
    assert_eq!(a.unsqueeze(0).unwrap().shape(), &[1, 2, 3, 4]);
    assert_eq!(a.unsqueeze(3).unwrap().squeeze(3).unwrap().shape(), &[2, 3, 4]);
    assert!(a.squeeze(0).is_err());
    assert_eq!(a.flatten(1, 2).unwrap().shape(), &[2, 12]);
    let b = t(&[1.0, 2.0], &[2, 1]).broadcast_to(&[2, 3]).unwrap();
    assert_eq!(b.to_vec_f32().unwrap(), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    assert!(t(&[1.0, 2.0], &[2]).broadcast_to(&[3]).is_err());
}

#[test]
fn cat_stack_index_select_gather() {
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = t(&[5.0, 6.0], &[1, 2]);
    assert_eq!(Tensor::cat(&[&a, &b], 0).unwrap().to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(Tensor::cat(&[&a, &b], 1).is_err());
    let s = Tensor::stack(&[&a, &a], 1).unwrap();
    assert_eq!(s.shape(), &[2, 2, 2]);
    assert_eq!(s.to_vec_f32().unwrap(), vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    let idx = Tensor::from_vec_i64(vec![1, 1, 0], &[3]).unwrap();
    assert_eq!(a.index_select(0, &idx).unwrap().to_vec_f32().unwrap(), vec![3.0, 4.0, 3.0, 4.0, 1.0, 2.0]);
    assert!(a.index_select(0, &Tensor::from_vec_i64(vec![2], &[1]).unwrap()).is_err());
    // torch.gather(a, 1, [[0, 0], [1, 0]]) = [[1, 1], [4, 3]]
    let g = Tensor::from_vec_i64(vec![0, 0, 1, 0], &[2, 2]).unwrap();
    assert_eq!(a.gather(1, &g).unwrap().to_vec_f32().unwrap(), vec![1.0, 1.0, 4.0, 3.0]);
    assert!(a.gather(1, &Tensor::from_vec_i64(vec![-1, 0, 0, 0], &[2, 2]).unwrap()).is_err());
}

#[test]
fn elementwise_broadcasting() {
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let row = t(&[10.0, 20.0, 30.0], &[3]);
    let col = t(&[1.0, 2.0], &[2, 1]);
    assert_eq!(a.add(&row).unwrap().to_vec_f32().unwrap(), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    assert_eq!(a.sub(&col).unwrap().to_vec_f32().unwrap(), vec![0.0, 1.0, 2.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.mul(&col).unwrap().to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0, 8.0, 10.0, 12.0]);
    assert_eq!(a.div(&Tensor::scalar(2.0)).unwrap().to_vec_f32().unwrap()[0], 0.5);
    assert_eq!(col.add(&row).unwrap().shape(), &[2, 3]);
    assert_eq!(a.maximum(&Tensor::scalar(3.5)).unwrap().to_vec_f32().unwrap(), vec![3.5, 3.5, 3.5, 4.0, 5.0, 6.0]);
    assert_eq!(a.minimum(&Tensor::scalar(3.5)).unwrap().to_vec_f32().unwrap()[3], 3.5);
    let e = a.add(&t(&[1.0, 2.0], &[2])).unwrap_err();
    assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("[2]"), "{e}");
    assert!(a.add(&Tensor::zeros_i64(&[3])).is_err());
    let x = t(&[-1.0, 0.0, 4.0], &[3]);
    assert_eq!(x.relu().unwrap().to_vec_f32().unwrap(), vec![0.0, 0.0, 4.0]);
    assert_eq!(x.neg().unwrap().to_vec_f32().unwrap(), vec![1.0, -0.0, -4.0]);
    assert_eq!(x.clamp(-0.5, 1.0).unwrap().to_vec_f32().unwrap(), vec![-0.5, 0.0, 1.0]);
    assert!(x.clamp(1.0, 0.0).is_err());
    assert_eq!(t(&[4.0], &[1]).sqrt().unwrap().item().unwrap(), 2.0);
    assert_eq!(t(&[2.0], &[1]).powf(3.0).unwrap().item().unwrap(), 8.0);
    assert!((t(&[1.0], &[1]).exp().unwrap().log().unwrap().item().unwrap() - 1.0).abs() < 1e-6);
    let i = Tensor::from_vec_i64(vec![1, 2], &[2]).unwrap();
    assert_eq!(i.add(&i).unwrap().to_vec_i64().unwrap(), vec![2, 4]);
    // Large inputs take the parallel path; it must agree with the serial one.
    let big = randn(&[300, 257], 3);
    let sum = big.add(&big.narrow(0, 0, 1).unwrap()).unwrap();
    assert_eq!(sum.get(&[299, 256]).unwrap(), big.get(&[299, 256]).unwrap() + big.get(&[0, 256]).unwrap());
    // Same-shape operands above the threshold run in parallel blocks with a short last block:
    // every value, in every block, against the rule applied value by value.
    let other = randn(&[300, 257], 4);
    let (xs, ys) = (big.to_vec_f32().unwrap(), other.to_vec_f32().unwrap());
    let check = |what: &str, got: Tensor, rule: &dyn Fn(f32, f32) -> f32| {
        let got = got.to_vec_f32().unwrap();
        assert_eq!(got.len(), xs.len(), "{what}");
        for (i, ((&g, &p), &q)) in got.iter().zip(&xs).zip(&ys).enumerate() {
            assert_eq!(g.to_bits(), rule(p, q).to_bits(), "{what} at {i}");
        }
    };
    check("add", big.add(&other).unwrap(), &|p, q| p + q);
    check("sub", big.sub(&other).unwrap(), &|p, q| p - q);
    check("mul", big.mul(&other).unwrap(), &|p, q| p * q);
    check("div", big.div(&other).unwrap(), &|p, q| p / q);
    check("maximum", big.maximum(&other).unwrap(), &|p, q| p.max(q));
    check("relu", big.relu().unwrap(), &|p, _| if p < 0.0 { 0.0 } else { p });
    check("relu_backward", other.relu_backward(&big.relu().unwrap()).unwrap(), &|p, q| if p > 0.0 { q } else { 0.0 });
}

#[test]
fn reductions() {
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(a.sum(&[0], false).unwrap().to_vec_f32().unwrap(), vec![5.0, 7.0, 9.0]);
    assert_eq!(a.sum(&[1], true).unwrap().shape(), &[2, 1]);
    assert_eq!(a.mean(&[0, 1], false).unwrap().item().unwrap(), 3.5);
    assert_eq!(a.sum_all().unwrap(), 21.0);
    assert_eq!(a.max(1, false).unwrap().to_vec_f32().unwrap(), vec![3.0, 6.0]);
    assert_eq!(a.argmax(1, false).unwrap().to_vec_i64().unwrap(), vec![2, 2]);
    assert_eq!(a.argmax(0, true).unwrap().shape(), &[1, 3]);
    assert_eq!(t(&[1.0, 3.0, 3.0], &[3]).argmax(0, false).unwrap().to_vec_i64().unwrap(), vec![1], "first maximum");
    assert_eq!(t(&[1.0, f32::NAN, 3.0], &[3]).argmax(0, false).unwrap().to_vec_i64().unwrap(), vec![1], "NaN wins");
    assert!(t(&[1.0, f32::NAN, 3.0], &[3]).max(0, false).unwrap().item().unwrap().is_nan());
    // relu and clamp keep NaN, as torch.relu / torch.clamp do.
    let r = t(&[f32::NAN, -1.0, 2.0], &[3]).relu().unwrap().to_vec_f32().unwrap();
    assert!(r[0].is_nan() && r[1..] == [0.0, 2.0], "{r:?}");
    let c = t(&[f32::NAN, -1.0, 2.0], &[3]).clamp(0.0, 1.0).unwrap().to_vec_f32().unwrap();
    assert!(c[0].is_nan() && c[1..] == [0.0, 1.0], "{c:?}");
    // So does the fused conv epilogue's ReLU (a NaN input poisons the outputs it reaches).
    let x = t(&[1.0, f32::NAN, -3.0, 4.0], &[1, 1, 2, 2]);
    let y = conv2d_fused(&x, &t(&[1.0], &[1, 1, 1, 1]), None, Conv2dParams::new(), None, true).unwrap();
    let y = y.to_vec_f32().unwrap();
    assert!(y[1].is_nan() && [y[0], y[2], y[3]] == [1.0, 0.0, 4.0], "{y:?}");
    // torch.var([1..6]) = 3.5 (unbiased); biased 35/12.
    assert!((a.var(&[0, 1], true, false).unwrap().item().unwrap() - 3.5).abs() < 1e-6);
    assert!((a.var(&[0, 1], false, false).unwrap().item().unwrap() - 35.0 / 12.0).abs() < 1e-6);
    assert_eq!(a.var(&[1], true, true).unwrap().to_vec_f32().unwrap(), vec![1.0, 1.0]);
    assert!(a.sum(&[2], false).is_err());
    assert!(Tensor::zeros(&[0, 2]).max(0, false).is_err());
}

#[test]
fn softmax_is_stable_for_huge_logits() {
    let x = t(&[1000.0, 1000.0, -1000.0], &[1, 3]);
    let s = x.softmax(1).unwrap().to_vec_f32().unwrap();
    assert_eq!(s, vec![0.5, 0.5, 0.0]);
    let l = x.log_softmax(1).unwrap().to_vec_f32().unwrap();
    assert!((l[0] + std::f32::consts::LN_2).abs() < 1e-6 && l[2] < -1999.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// 2-D and batched matmul (with transposed operands read in place) against the oracle.
    #[test]
    fn matmul_matches_reference(m in 1usize..40, k in 1usize..40, n in 1usize..40, batch in 1usize..4, ta in any::<bool>(), tb in any::<bool>(), seed in any::<u64>()) {
        let a = if ta { randn(&[batch, k, m], seed).transpose(1, 2).unwrap() } else { randn(&[batch, m, k], seed) };
        let b = if tb { randn(&[n, k], seed + 1).t().unwrap() } else { randn(&[k, n], seed + 1) };
        let got = a.matmul(&b).unwrap();
        prop_assert_eq!(got.shape(), &[batch, m, n][..]);
        let (af, bf) = (f64s(&a.contiguous()), f64s(&b.contiguous()));
        let want: Vec<f64> = (0..batch).flat_map(|i| reference::matmul(&af[i * m * k..(i + 1) * m * k], &bf, m, k, n)).collect();
        assert_close("matmul", &got.to_vec_f32().unwrap(), &want, 1e-5);
    }
}

#[test]
fn matmul_large_and_errors() {
    let a = randn(&[130, 300], 1);
    let b = randn(&[300, 70], 2);
    let want = reference::matmul(&f64s(&a), &f64s(&b), 130, 300, 70);
    for threads in [1, 3] {
        let got = with_threads(threads, || a.matmul(&b)).unwrap();
        assert_close("matmul 130x300x70", &got.to_vec_f32().unwrap(), &want, 1e-5);
    }
    // Large enough for the row-band split under 2 and 3 threads.
    let (m, k, n) = (800, 260, 270);
    let a2 = randn(&[m, k], 4);
    let b2 = randn(&[k, n], 5);
    let want = reference::matmul(&f64s(&a2), &f64s(&b2), m, k, n);
    for threads in [2, 3] {
        let got = with_threads(threads, || a2.matmul(&b2)).unwrap();
        assert_close("matmul row bands", &got.to_vec_f32().unwrap(), &want, 1e-5);
    }
    // One sequential GEMM per block: column bands (wide output), and a grid of 2 x 4 blocks.
    for (m, k, n, threads) in [(40, 50, 500, 3), (70, 60, 300, 8)] {
        let (a3, b3) = (randn(&[m, k], 6), randn(&[k, n], 7));
        let want = reference::matmul(&f64s(&a3), &f64s(&b3), m, k, n);
        let got = with_threads(threads, || a3.matmul(&b3)).unwrap();
        assert_close(&format!("matmul {m}x{k}x{n} blocks"), &got.to_vec_f32().unwrap(), &want, 1e-5);
    }
    assert!(a.matmul(&a).is_err());
    assert!(Tensor::zeros(&[3]).matmul(&Tensor::zeros(&[3, 1])).is_err());
    assert!(randn(&[2, 3, 4], 1).matmul(&randn(&[3, 4, 5], 2)).is_err(), "batch 2 vs 3");
}

#[test]
fn initialisers() {
    let mut rng = tensor::Rng::seed(0);
    let u = Tensor::uniform(&[1000], -2.0, 3.0, &mut rng).to_vec_f32().unwrap();
    assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let r = Tensor::rand(&[1000], &mut rng).mean_all().unwrap();
    assert!((r - 0.5).abs() < 0.05);
    assert_eq!(fans(&[8, 4, 3, 3]).unwrap(), (36, 72));
    assert!(fans(&[8]).is_err());
}

#[test]
fn infinities_and_nans_are_found_anywhere() {
    let mut v = vec![1.5f32; 40_000];
    let all = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap().all_finite().unwrap();
    assert!(all(&v) && all(&[]) && all(&[f32::MAX, f32::MIN_POSITIVE, -0.0]));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
        for at in [0, 16_383, 16_384, 39_999] {
            v[at] = bad;
            assert!(!all(&v), "{bad} at {at}");
            v[at] = 1.5;
        }
    }
    // Several tensors at once, the bad value in the last; i64 is refused by name.
    let ok = Tensor::ones(&[3]);
    let bad = Tensor::from_vec(vec![0.0, f32::NAN], &[2]).unwrap();
    assert!(Tensor::all_finite_together(&[&ok, &ok]).unwrap());
    assert!(!Tensor::all_finite_together(&[&ok, &bad]).unwrap());
    let e = Tensor::arange_i64(3).all_finite().unwrap_err();
    assert!(e.to_string().contains("all_finite"), "{e}");
}

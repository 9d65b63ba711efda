//! One suite for every device: each op runs on the host and on every GPU device this build has
//! (the `wgpu` feature: Mesa's lavapipe in CI; `cuda` where a driver is present), and the GPU
//! result must match the host's — itself tested against the direct-loop oracle and PyTorch in
//! the other suites — within 1e-4 relative (plus 1e-5 of the tensor's largest magnitude, at
//! least 1, for sums whose terms cancel). Shapes are random and include the awkward ones: odd sizes,
//! stride 2, padding, dilation, groups, batch 1.
//!
//! Without a GPU feature the suite checks that GPU devices are refused with a clear error. A GPU
//! build on a machine without a usable adapter skips the GPU comparisons with a message, unless
//! `RESNET_REQUIRE_GPU=1` (CI sets it) turns that into a failure for every GPU device built.

use proptest::prelude::*;
use tensor::Rng;
use tensor::*;

/// The GPU devices to compare against the host.
fn gpu_devices() -> Vec<Device> {
    let built: Vec<Device> = [(cfg!(feature = "wgpu"), Device::Wgpu), (cfg!(feature = "cuda"), Device::Cuda)]
        .into_iter()
        .filter_map(|(on, d)| on.then_some(d))
        .collect();
    let require = std::env::var("RESNET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let mut usable = Vec::new();
    for d in built {
        match d.check() {
            Ok(()) => usable.push(d),
            Err(e) if require => panic!("RESNET_REQUIRE_GPU=1 but {d} cannot run: {e}"),
            Err(e) => eprintln!("skipping GPU comparisons on {d}: {e}"),
        }
    }
    usable
}

fn close(gpu: &[f32], cpu: &[f32]) -> std::result::Result<(), String> {
    if gpu.len() != cpu.len() {
        return Err(format!("lengths differ: {} vs {}", gpu.len(), cpu.len()));
    }
    // Inputs are of order 1, so an output's error is measured against at least that (outputs
    // near zero by cancellation, such as a batch-norm gradient over two values, are noise).
    let scale = cpu.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        // Written so that a NaN on one side only fails (every comparison with NaN is false).
        let agree = g == c || (g.is_nan() && c.is_nan()) || (g - c).abs() <= 1e-4 * c.abs() + 1e-5 * scale;
        if !agree {
            return Err(format!("element {i}: gpu {g} vs cpu {c} (scale {scale})"));
        }
    }
    Ok(())
}

/// Runs `f` on the host tensors and on their copies on each GPU; the outputs must agree.
fn check_all(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
) -> std::result::Result<(), TestCaseError> {
    let want = f(inputs).map_err(|e| TestCaseError::fail(format!("cpu: {e}")))?;
    for d in gpu_devices() {
        let moved: Vec<Tensor> = inputs.iter().map(|t| t.to_device(d).expect("upload")).collect();
        let got = f(&moved).map_err(|e| TestCaseError::fail(format!("{d}: {e}")))?;
        prop_assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(g.device(), d, "output {} left the device", k);
            prop_assert_eq!(g.shape(), w.shape(), "output {} shape on {}", k, d);
            prop_assert_eq!(g.dtype(), w.dtype());
            match w.dtype() {
                DType::F32 => close(&g.to_vec_f32().unwrap(), &w.to_vec_f32().unwrap())
                    .map_err(|m| TestCaseError::fail(format!("output {k} on {d}: {m}")))?,
                DType::I64 => prop_assert_eq!(g.to_vec_i64().unwrap(), w.to_vec_i64().unwrap()),
            }
        }
    }
    Ok(())
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Rng::seed(seed))
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 32, ..ProptestConfig::default() }
}

/// A shape of rank 1..=4 with sizes 1..=9.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..10, 1..5)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unary_ops(s in shape(), seed in 0u64..1000) {
        let x = randn(&s, seed);
        check_all(&[x], |t| {
            let x = &t[0];
            Ok(vec![
                x.neg()?, x.exp()?, x.abs()?.log()?, x.abs()?.sqrt()?, x.abs()?.powf(1.7)?, x.relu()?, x.abs()?,
                x.clamp(-0.5, 0.7)?, x.add_scalar(2.5)?, x.mul_scalar(-3.0)?, x.relu_backward(&x.neg()?.relu()?)?,
            ])
        })?;
    }

    #[test]
    fn binary_ops_broadcast(s in shape(), mask in prop::collection::vec(any::<bool>(), 4), drop in 0usize..3, seed in 0u64..1000) {
        // rhs: the same shape with some dimensions set to 1 and some leading ones dropped.
        let r: Vec<usize> = s.iter().zip(&mask).map(|(&d, &m)| if m { 1 } else { d }).collect();
        let r = r[drop.min(r.len() - 1)..].to_vec();
        let (a, b) = (randn(&s, seed), randn(&r, seed + 1));
        check_all(&[a, b], |t| {
            let (a, b) = (&t[0], &t[1]);
            Ok(vec![a.add(b)?, a.sub(b)?, a.mul(b)?, a.div(b)?, a.maximum(b)?, a.minimum(b)?, b.sub(a)?])
        })?;
    }

    #[test]
    fn views(s in prop::collection::vec(1usize..8, 2..5), seed in 0u64..1000, start in 0usize..3) {
        let x = randn(&s, seed);
        let rank = s.len();
        check_all(&[x], |t| {
            let x = &t[0];
            let perm: Vec<usize> = (0..rank).rev().collect();
            let len = s[1].saturating_sub(start.min(s[1] - 1)).max(1);
            let mut wide = s.clone();
            wide.insert(0, 3);
            Ok(vec![
                x.permute(&perm)?,
                x.transpose(0, rank - 1)?,
                x.narrow(1, start.min(s[1] - 1), len)?,
                x.unsqueeze(1)?.broadcast_to(&{ let mut b = s.clone(); b.insert(1, 4); b })?,
                x.broadcast_to(&wide)?,
                x.reshape(&[s.iter().product()])?,
                x.flatten(0, rank - 1)?.unsqueeze(0)?.squeeze(0)?,
            ])
        })?;
    }

    #[test]
    fn reductions_and_softmax(s in shape(), seed in 0u64..1000, dim_pick in 0usize..4, keep in any::<bool>()) {
        let x = randn(&s, seed);
        let d = dim_pick % s.len();
        check_all(&[x], |t| {
            let x = &t[0];
            let all: Vec<usize> = (0..s.len()).collect();
            Ok(vec![
                x.sum(&[d], keep)?, x.mean(&[d], keep)?, x.sum(&all, keep)?, x.max(d, keep)?, x.argmax(d, keep)?,
                x.var(&[d], true, keep)?, x.softmax(d)?, x.log_softmax(d)?,
            ])
        })?;
    }

    #[test]
    fn long_reductions(outer in 1usize..4, red in 1000usize..5000, seed in 0u64..1000) {
        // Long axes take the one-cube-per-output tree reduction.
        let x = randn(&[outer, red], seed);
        check_all(&[x], |t| Ok(vec![t[0].sum(&[1], false)?, t[0].max(1, false)?, t[0].mean(&[0, 1], false)?]))?;
    }

    #[test]
    fn matmul_batched_and_broadcast(m in 1usize..80, k in 1usize..80, n in 1usize..80, b in 1usize..4, seed in 0u64..1000) {
        let (a, w, c) = (randn(&[b, m, k], seed), randn(&[k, n], seed + 1), randn(&[b, k, n], seed + 2));
        check_all(&[a, w, c], |t| Ok(vec![t[0].matmul(&t[1])?, t[0].matmul(&t[2])?, t[0].narrow(0, 0, 1)?.squeeze(0)?.matmul(&t[2])?]))?;
    }

    #[test]
    fn conv2d_forward_and_backward(
        n in 1usize..3, cin_g in 1usize..5, cout_g in 1usize..5, groups in 1usize..4,
        h in 3usize..12, w in 3usize..12, k in 1usize..4, stride in 1usize..3, pad in 0usize..3, dil in 1usize..3,
        bias in any::<bool>(), relu in any::<bool>(), seed in 0u64..1000,
    ) {
        let p = Conv2dParams::new().stride(stride).padding(pad).dilation(dil).groups(groups);
        let xs = [n, cin_g * groups, h, w];
        let ws = [cout_g * groups, cin_g, k, k];
        let Ok(out) = conv2d_output_shape(&xs, &ws, p) else { return Ok(()) };
        let inputs = [randn(&xs, seed), randn(&ws, seed + 1), randn(&[ws[0]], seed + 2), randn(&out, seed + 3), randn(&out, seed + 4), randn(&[ws[0]], seed + 5)];
        check_all(&inputs, |t| {
            let b = bias.then_some(&t[2]);
            Ok(vec![
                conv2d(&t[0], &t[1], b, p)?,
                conv2d_fused(&t[0], &t[1], b, p, Some(&t[4]), relu)?,
                conv2d_affine(&t[0], &t[1], &t[5], &t[2], p, bias.then_some(&t[4]), relu)?,
                conv2d_backward_input(&t[3], &t[1], &xs, p)?,
                conv2d_backward_weight(&t[0], &t[3], &ws, p)?,
                conv2d_backward_bias(&t[3])?,
            ])
        })?;
    }

    #[test]
    fn pooling(n in 1usize..3, c in 1usize..4, h in 2usize..13, w in 2usize..13, k in 1usize..4, stride in 1usize..3,
               pad_pick in 0usize..2, ceil in any::<bool>(), include_pad in any::<bool>(), seed in 0u64..1000) {
        let pad = pad_pick.min(k / 2);
        let p = Pool2dParams { kernel: [k, k], stride: [stride, stride], padding: [pad, pad], ceil_mode: ceil };
        let xs = [n, c, h, w];
        let Ok(out) = pool2d_output_shape(&xs, p) else { return Ok(()) };
        let inputs = [randn(&xs, seed), randn(&out, seed + 1), randn(&[n, c, 2, 3], seed + 2)];
        check_all(&inputs, |t| {
            let (y, idx) = max_pool2d(&t[0], p)?;
            Ok(vec![
                y,
                idx.clone(),
                max_pool2d_backward(&t[1], &idx, &xs)?,
                avg_pool2d(&t[0], p, include_pad)?,
                avg_pool2d_backward(&t[1], &xs, p, include_pad)?,
                adaptive_avg_pool2d(&t[0], [2, 3])?,
                adaptive_avg_pool2d(&t[0], [1, 1])?,
                adaptive_avg_pool2d_backward(&t[2], &xs)?,
            ])
        })?;
    }

    #[test]
    fn batch_norm_train_and_eval(n in 1usize..4, c in 1usize..6, h in 1usize..7, w in 2usize..7, affine in any::<bool>(), seed in 0u64..1000) {
        let xs = [n, c, h, w];
        let var = randn(&[c], seed + 4).abs().unwrap().add_scalar(0.5).unwrap();
        let inputs = [randn(&xs, seed), randn(&[c], seed + 1), randn(&[c], seed + 2), randn(&[c], seed + 3), var, randn(&xs, seed + 5)];
        check_all(&inputs, |t| {
            let (g, b) = if affine { (Some(&t[1]), Some(&t[2])) } else { (None, None) };
            let tr = batch_norm_train(&t[0], g, b, Some((&t[3], &t[4])), 0.1, 1e-5)?;
            let bw = batch_norm_train_backward(&t[5], &t[0], g, &tr.mean, &tr.invstd)?;
            let ev = batch_norm_eval(&t[0], g, b, &t[3], &t[4], 1e-5)?;
            let ebw = batch_norm_eval_backward(&t[5], &t[0], g, &t[3], &t[4], 1e-5)?;
            let (scale, shift) = batch_norm_eval_scale_shift(g, b, &t[3], &t[4], 1e-5)?;
            let rm = tr.running_mean.clone().expect("running stats given");
            let rv = tr.running_var.clone().expect("running stats given");
            Ok(vec![tr.output, tr.mean, tr.invstd, rm, rv, bw.input, bw.weight, bw.bias, ev, ebw.input, ebw.weight, ebw.bias, scale, shift])
        })?;
    }

    #[test]
    fn optimizer_steps(len in 1usize..300, step in 1u64..5, wd in prop::sample::select(vec![0.0, 0.01]),
                       momentum in prop::sample::select(vec![0.0, 0.9]), nesterov in any::<bool>(), seed in 0u64..1000) {
        let inputs = [randn(&[len], seed), randn(&[len], seed + 1), randn(&[len], seed + 2), randn(&[len], seed + 3).abs().unwrap()];
        let sgd = SgdStep { lr: 0.1, weight_decay: wd, momentum, dampening: 0.0, nesterov: nesterov && momentum > 0.0 };
        check_all(&inputs, |t| {
            let (p1, b1) = sgd_step(&t[0], &t[1], None, sgd)?;
            let (p2, b2) = sgd_step(&t[0], &t[1], Some(t[2].clone()), sgd)?;
            let mut out = vec![p1, p2];
            out.extend(b1.into_iter().chain(b2));
            for decoupled in [false, true] {
                let h = AdamStep { lr: 0.01, weight_decay: wd, betas: (0.9, 0.999), eps: 1e-8, decoupled, step };
                let (p, m, v) = adam_step(&t[0], &t[1], Some(t[2].clone()), Some(t[3].clone()), h)?;
                let (p0, m0, v0) = adam_step(&t[0], &t[1], None, None, h)?;
                out.extend([p, m, v, p0, m0, v0]);
            }
            Ok(out)
        })?;
    }

    #[test]
    fn gather_along_a_dimension(rows in 1usize..20, classes in 1usize..12, seed in 0u64..1000) {
        let x = randn(&[rows, classes], seed);
        let idx: Vec<i64> = (0..rows).map(|r| ((r as u64 * 7 + seed) % classes as u64) as i64).collect();
        let idx = Tensor::from_vec_i64(idx, &[rows, 1]).unwrap();
        check_all(&[x, idx], |t| {
            let picks = t[1].squeeze(1)?;
            Ok(vec![
                t[0].gather(1, &t[1])?,
                Tensor::one_hot(&picks, classes)?,
                t[0].index_select(1, &picks)?,
                t[0].index_select(0, &Tensor::from_vec_i64(vec![0, (rows - 1) as i64, 0], &[3])?.to_device(t[0].device())?)?,
                Tensor::cat(&[&t[0], &t[0].narrow(1, 0, 1)?, &t[0]], 1)?,
                Tensor::stack(&[&t[0], &t[0]], 0)?,
                Tensor::cat(&[&t[1], &t[1]], 0)?,
            ])
        })?;
    }
}

#[test]
fn grouped_pointwise_convs_read_the_input_in_place() {
    // 1x1, stride 1, no padding: the GPU skips im2col and reads each group's rows directly.
    let p = Conv2dParams::new().groups(4);
    let (xs, ws) = ([3, 8, 5, 7], [12, 2, 1, 1]);
    let inputs = [randn(&xs, 1), randn(&ws, 2), randn(&[3, 12, 5, 7], 3)];
    check_all(&inputs, |t| {
        Ok(vec![
            conv2d(&t[0], &t[1], None, p)?,
            conv2d_backward_input(&t[2], &t[1], &xs, p)?,
            conv2d_backward_weight(&t[0], &t[2], &ws, p)?,
        ])
    })
    .unwrap();
}

#[test]
fn nan_propagates_as_on_the_host() {
    let v = vec![1.0, f32::NAN, -2.0, 3.0, 0.5, f32::NAN, -1.0, 2.0, 4.0];
    let x = Tensor::from_vec(v, &[1, 1, 3, 3]).unwrap();
    let y = Tensor::from_vec(vec![0.0, 1.0, f32::NAN], &[3]).unwrap();
    check_all(&[x, y], |t| {
        let p = Pool2dParams { kernel: [2, 2], stride: [1, 1], padding: [0, 0], ceil_mode: false };
        let (pooled, idx) = max_pool2d(&t[0], p)?;
        Ok(vec![
            t[0].relu()?,
            t[0].clamp(0.0, 2.5)?,
            conv2d_fused(
                &t[0],
                &t[0].narrow(2, 0, 1)?.narrow(3, 0, 1)?.contiguous(),
                None,
                Conv2dParams::new(),
                None,
                true,
            )?,
            t[0].reshape(&[3, 3])?.maximum(&t[1])?,
            t[0].reshape(&[3, 3])?.minimum(&t[1])?,
            t[0].reshape(&[3, 3])?.max(1, false)?,
            t[0].reshape(&[3, 3])?.argmax(1, false)?,
            t[0].sum(&[3], false)?,
            pooled,
            idx,
        ])
    })
    .unwrap();
}

#[test]
fn transfers_are_exact_and_i64_is_range_checked() {
    let x = randn(&[3, 5, 7], 1);
    let labels = Tensor::from_vec_i64(vec![0, -5, 1 << 30, 7], &[4]).unwrap();
    for d in gpu_devices() {
        let g = x.to_device(d).unwrap();
        assert_eq!(g.device(), d);
        assert_eq!(g.to_vec_f32().unwrap(), x.to_vec_f32().unwrap());
        assert_eq!(g.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap(), x.to_vec_f32().unwrap());
        assert_eq!(labels.to_device(d).unwrap().to_vec_i64().unwrap(), labels.to_vec_i64().unwrap());
        // `.npy` bytes of a GPU tensor are those of its host copy (it is copied down first).
        assert_eq!(npy_bytes(&g).unwrap(), npy_bytes(&x).unwrap());
        assert_eq!(npy_bytes(&labels.to_device(d).unwrap()).unwrap(), npy_bytes(&labels).unwrap());
        let too_big = Tensor::from_vec_i64(vec![1 << 40], &[1]).unwrap();
        let err = too_big.to_device(d).unwrap_err().to_string();
        assert!(err.contains("i32"), "{err}");
        assert_eq!(
            g.to_dtype(DType::I64).to_dtype(DType::F32).to_vec_f32().unwrap(),
            x.to_dtype(DType::I64).to_dtype(DType::F32).to_vec_f32().unwrap()
        );
        assert_eq!(g.sum_all().unwrap().to_bits(), g.sum_all().unwrap().to_bits(), "reductions repeat bit for bit");
        assert!((g.sum_all().unwrap() - x.sum_all().unwrap()).abs() < 1e-4);
    }
}

#[test]
fn mixed_devices_and_host_only_ops_are_clear_errors() {
    let x = randn(&[2, 3], 2);
    for d in gpu_devices() {
        let g = x.to_device(d).unwrap();
        let err = g.add(&x).unwrap_err();
        assert!(matches!(err, TensorError::DeviceMismatch { .. }), "{err}");
        assert!(err.to_string().contains("cpu") && err.to_string().contains(&d.to_string()), "{err}");
        let err =
            conv2d(&randn(&[1, 3, 4, 4], 3), &randn(&[2, 3, 1, 1], 4).to_device(d).unwrap(), None, Conv2dParams::new())
                .unwrap_err();
        assert!(matches!(err, TensorError::DeviceMismatch { .. }), "{err}");
        let bad = Tensor::from_vec_i64(vec![0, 3], &[2, 1]).unwrap().to_device(d).unwrap();
        let err = g.gather(1, &bad).unwrap_err();
        assert!(matches!(err, TensorError::IndexOutOfRange { index: 3, size: 3, .. }), "{err}");
        let err = g.index_select(0, &Tensor::from_vec_i64(vec![2], &[1]).unwrap().to_device(d).unwrap()).unwrap_err();
        assert!(matches!(err, TensorError::IndexOutOfRange { index: 2, size: 2, .. }), "{err}");
        let err = g.map("custom", |v| v * 2.0).unwrap_err();
        assert!(matches!(err, TensorError::Unsupported { .. }) && err.to_string().contains("to_device"), "{err}");
        assert!(g.f32_data("borrow").is_err());
    }
}

#[test]
fn more_than_a_grid_row_of_cubes() {
    // 65,535 cubes of 256 units cover 16.7 M elements; beyond that the grid needs a second axis.
    let n = 65_535 * 256 + 1000;
    let x = Tensor::from_vec((0..n).map(|i| (i % 1000) as f32).collect(), &[n]).unwrap();
    for d in gpu_devices() {
        let y = x.to_device(d).unwrap().add_scalar(1.0).unwrap().to_vec_f32().unwrap();
        assert_eq!(y[n - 1], ((n - 1) % 1000) as f32 + 1.0);
        assert_eq!(y[65_535 * 256], ((65_535 * 256) % 1000) as f32 + 1.0);
    }
}

#[test]
fn devices_not_built_are_refused_clearly() {
    // Every build lacks at least one of the two (CI's has wgpu, not cuda).
    let not_built: Vec<Device> = [(cfg!(feature = "wgpu"), Device::Wgpu), (cfg!(feature = "cuda"), Device::Cuda)]
        .into_iter()
        .filter_map(|(on, d)| (!on).then_some(d))
        .collect();
    for d in not_built {
        let err = Tensor::zeros(&[2]).to_device(d).unwrap_err().to_string();
        assert!(err.contains(&d.to_string()) && err.contains("feature"), "{err}");
        assert!(Device::parse(&d.to_string()).is_err());
        assert!(!d.is_available());
    }
}

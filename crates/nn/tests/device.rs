//! Training on a GPU device gives the host's numbers: the same small conv net (conv, batch
//! norm, ReLU, pooling, linear, cross-entropy with label smoothing) trained a few steps with
//! SGD (momentum, Nesterov, weight decay) and with AdamW, once on the host and once after
//! `to_device`; losses and final weights must agree to 1e-4 relative. The module, optimizer
//! state and loss stay on the device throughout (checked), and a state dict saved from the
//! device loads back on the host.
//!
//! Runs for each GPU device this build has (the `wgpu` feature: lavapipe in CI); without one the
//! test has nothing to compare and says so. `RESNET_REQUIRE_GPU=1` makes a missing adapter fail.

use nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2dConfig, CrossEntropyLoss, Flatten, Linear, MaxPool2d, Method, Module,
    ModuleExt, Optimizer, ReLU, Sequential, Var,
};
use tensor::{Device, Pool2dParams, Rng, Tensor};

fn gpu_devices() -> Vec<Device> {
    let built = [(cfg!(feature = "wgpu"), Device::Wgpu), (cfg!(feature = "cuda"), Device::Cuda)];
    let require = std::env::var("RESNET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let mut usable = Vec::new();
    for (on, d) in built {
        if !on {
            continue;
        }
        match d.check() {
            Ok(()) => usable.push(d),
            Err(e) if require => panic!("RESNET_REQUIRE_GPU=1 but {d} cannot run: {e}"),
            Err(e) => eprintln!("skipping {d}: {e}"),
        }
    }
    if usable.is_empty() {
        eprintln!("no GPU device in this build: nothing to compare");
    }
    usable
}

fn net(seed: u64) -> Sequential {
    let mut rng = Rng::seed(seed);
    let mut s = Sequential::new(Vec::new());
    s.push(Conv2dConfig::new(3, 8, 3).padding(1).bias(false).init(&mut rng).unwrap());
    s.push(BatchNorm2d::new(8));
    s.push(ReLU);
    s.push(MaxPool2d(Pool2dParams { kernel: [2, 2], stride: [2, 2], padding: [0, 0], ceil_mode: false }));
    // No bias before a batch norm: its gradient is pure rounding noise, which Adam scales up to
    // full-size steps, so host and GPU would legitimately part ways there.
    s.push(Conv2dConfig::new(8, 8, 3).stride(2).padding(1).groups(2).bias(false).init(&mut rng).unwrap());
    s.push(BatchNorm2d::new(8));
    s.push(ReLU);
    s.push(AdaptiveAvgPool2d([1, 1]));
    s.push(Flatten::default());
    s.push(Linear::new(8, 5, true, &mut rng).unwrap());
    s
}

/// Trains `steps` steps on `device`; returns the losses and the final state dict (on the host).
fn train(device: Device, method: Method, steps: usize) -> (Vec<f32>, Vec<(String, Tensor)>) {
    let model = net(7);
    model.to_device(device).unwrap();
    assert_eq!(model.device(), device);
    let mut opt = Optimizer::new(method, model.trainable_parameters(), 0.05, 1e-3).unwrap();
    let loss_fn = CrossEntropyLoss { label_smoothing: 0.1, ..CrossEntropyLoss::default() };
    let mut rng = Rng::seed(3);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let x = Tensor::randn(&[4, 3, 12, 12], &mut rng).to_device(device).unwrap();
        let y = Tensor::from_vec_i64((0..4).map(|_| (rng.uniform() * 5.0) as i64 % 5).collect(), &[4]).unwrap();
        let loss = loss_fn.forward(&model.forward(&Var::constant(x)).unwrap(), &y).unwrap();
        assert_eq!(loss.value().device(), device, "the loss stays on the device");
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
        losses.push(loss.value().item().unwrap());
    }
    for (name, t) in opt.state_dict() {
        if t.dtype() == tensor::DType::F32 {
            assert_eq!(t.device(), device, "optimizer state {name} stays on the device");
        }
    }
    let state = model.state_dict().into_iter().map(|(k, t)| (k, t.to_device(Device::Cpu).unwrap())).collect();
    (losses, state)
}

fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}");
    let scale = cpu.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!((g - c).abs() <= 1e-4 * c.abs() + 2e-5 * scale, "{what}[{i}]: gpu {g} vs cpu {c}");
    }
}

#[test]
fn training_steps_match_the_host() {
    let methods = [
        Method::Sgd { momentum: 0.9, dampening: 0.0, nesterov: true },
        Method::AdamW { betas: (0.9, 0.999), eps: 1e-8 },
    ];
    for device in gpu_devices() {
        for method in methods {
            let (cpu_losses, cpu_state) = train(Device::Cpu, method, 4);
            let (gpu_losses, gpu_state) = train(device, method, 4);
            assert_close(&format!("{method:?} losses on {device}"), &gpu_losses, &cpu_losses);
            for ((k, g), (_, c)) in gpu_state.iter().zip(&cpu_state) {
                match c.dtype() {
                    tensor::DType::F32 => assert_close(k, &g.to_vec_f32().unwrap(), &c.to_vec_f32().unwrap()),
                    tensor::DType::I64 => assert_eq!(g.to_vec_i64().unwrap(), c.to_vec_i64().unwrap(), "{k}"),
                }
            }
            // Accuracy reads only the argmax back from a device; it counts as on the host.
            let scores = Tensor::randn(&[9, 4], &mut Rng::seed(5));
            let labels = Tensor::from_vec_i64(vec![0, 1, 2, 3, 0, 1, 2, 3, 0], &[9]).unwrap();
            let on_device = nn::accuracy(&scores.to_device(device).unwrap(), &labels).unwrap();
            assert_eq!(on_device, nn::accuracy(&scores, &labels).unwrap());
            // NLL of log-softmax is cross-entropy, on the device too, with its gradient.
            let logits = Tensor::randn(&[6, 5], &mut Rng::seed(11));
            let y = Tensor::from_vec_i64(vec![0, 4, 2, 2, 1, 3], &[6]).unwrap();
            let nll = |d: Device| {
                let x = Var::parameter(logits.to_device(d).unwrap());
                let loss = nn::functional::nll_loss(&x.log_softmax(1).unwrap(), &y, nn::Reduction::Mean).unwrap();
                loss.backward().unwrap();
                (loss.value().item().unwrap(), x.grad().unwrap().to_vec_f32().unwrap())
            };
            let ((lc, gc), (lg, gg)) = (nll(Device::Cpu), nll(device));
            assert_close("nll loss", &[lg], &[lc]);
            assert_close("nll gradient", &gg, &gc);
            // A state dict from the device loads into a host model.
            let host = net(99);
            host.load_state_dict(&gpu_state, true).unwrap();
        }
    }
}

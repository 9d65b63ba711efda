//! Modules: names and order of parameters and buffers, state dicts (strict and not), modes,
//! freezing, counts, sub-modules, shape inference and the summary table.

mod common;
use common::*;
use nn::*;
use tensor::{Pool2dParams, Rng, Tensor};

#[test]
fn state_dict_keys_follow_pytorch_order() {
    let net = Small::new(0);
    let keys: Vec<String> = net.state_dict().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "conv2.weight",
            "bn2.weight",
            "bn2.bias",
            "bn2.running_mean",
            "bn2.running_var",
            "bn2.num_batches_tracked",
            "fc.weight",
            "fc.bias"
        ]
    );
    let params: Vec<String> = net.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        params,
        ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias"]
    );
    assert_eq!(net.named_buffers().len(), 6);
}

#[test]
fn strict_loading_reports_every_problem_and_changes_nothing() {
    let net = Small::new(0);
    let before = net.fc.weight.value().to_vec_f32().unwrap();
    let mut sd = Small::new(1).state_dict();
    sd.retain(|(k, _)| k != "bn1.bias");
    sd.push(("extra.weight".into(), Tensor::zeros(&[1])));
    for (k, v) in sd.iter_mut() {
        if k == "fc.weight" {
            *v = Tensor::zeros(&[5, 4]);
        }
    }
    let e = net.load_state_dict(&sd, true).unwrap_err().to_string();
    assert!(e.contains("missing keys: bn1.bias"), "{e}");
    assert!(e.contains("unexpected keys: extra.weight"), "{e}");
    assert!(e.contains("size mismatch for fc.weight: the model has [3, 4], the state dict [5, 4]"), "{e}");
    assert_eq!(net.fc.weight.value().to_vec_f32().unwrap(), before, "strict failure loads nothing");

    let report = net.load_state_dict(&sd, false).unwrap();
    assert_eq!(report.missing, ["bn1.bias"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(
        net.conv1.weight.value().to_vec_f32().unwrap(),
        Small::new(1).conv1.weight.value().to_vec_f32().unwrap()
    );
    assert_eq!(net.fc.weight.value().to_vec_f32().unwrap(), before, "mismatched keys are skipped");
}

#[test]
fn older_files_without_num_batches_tracked_load_strictly() {
    let net = Small::new(0);
    let sd: Vec<_> =
        Small::new(2).state_dict().into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    assert!(net.load_state_dict(&sd, true).unwrap().is_clean());
}

#[test]
fn train_eval_modes_and_running_stats() {
    let net = Small::from_fixture();
    let x = Var::constant(fixture("x"));
    assert!(net.is_training());
    net.eval();
    assert!(!net.is_training());
    let before = net.bn1.running_mean.as_ref().unwrap().value().to_vec_f32().unwrap();
    let eval_out = net.forward(&x).unwrap().value().to_vec_f32().unwrap();
    assert_eq!(
        net.bn1.running_mean.as_ref().unwrap().value().to_vec_f32().unwrap(),
        before,
        "eval leaves running stats"
    );
    assert_eq!(net.forward(&x).unwrap().value().to_vec_f32().unwrap(), eval_out, "eval is deterministic");
    net.train();
    net.forward(&x).unwrap();
    assert_ne!(net.bn1.running_mean.as_ref().unwrap().value().to_vec_f32().unwrap(), before);
    assert_eq!(net.bn1.num_batches_tracked.as_ref().unwrap().value().to_vec_i64().unwrap(), vec![1]);
}

#[test]
fn freezing_leaves_parameters_out_of_the_optimizer() {
    let net = Small::new(0);
    assert_eq!(net.parameter_counts(), (108 + 8 + 144 + 8 + 12 + 3, 283));
    net.conv1.freeze();
    net.bn1.freeze();
    assert_eq!(net.parameter_counts(), (283, 283 - 116));
    assert_eq!(net.trainable_parameters().len(), 5);
    let opt = Optimizer::new(Method::adam(), net.named_parameters().into_iter().map(|(_, v)| v).collect(), 1e-3, 0.0)
        .unwrap();
    assert_eq!(opt.groups()[0].params.len(), 5, "frozen parameters are filtered out");
    let loss = CrossEntropyLoss::default()
        .forward(&net.forward(&Var::constant(fixture("x"))).unwrap(), &fixture("y"))
        .unwrap();
    loss.backward().unwrap();
    assert!(net.conv1.weight.grad().is_none() && net.conv2.weight.grad().is_some());
    net.unfreeze();
    assert_eq!(net.parameter_counts().1, 283);
}

#[test]
fn submodules_and_children() {
    let mut seq = Sequential::default();
    seq.push(Conv2dConfig::new(3, 8, 3).padding(1).init(&mut Rng::seed(0)).unwrap());
    seq.push(BatchNorm2d::new(8));
    seq.push(ReLU);
    let keys: Vec<String> = seq.state_dict().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys[..3], ["0.weight", "0.bias", "1.weight"]);
    assert_eq!(seq.submodule("1").unwrap().type_name(), "BatchNorm2d");
    assert!(seq.submodule("7").is_none());
    assert_eq!(seq.named_modules().len(), 4);
    assert_eq!(seq.submodule("0").unwrap().extra_repr(), "3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)");
}

#[test]
fn shape_inference_and_summary() {
    let net = Small::new(0);
    let (out, macs) = net.output_shape(&[4, 3, 8, 8]).unwrap();
    assert_eq!(out, vec![4, 3]);
    // torchinfo's rule: conv weights per output position, others per batch element.
    let expected = 108 * 4 * 64 + 8 * 4 + 144 * 4 * 16 + 8 * 4 + 15 * 4;
    assert_eq!(macs, expected as u64);
    let table = summary(&net, &[4, 3, 8, 8], 3).unwrap();
    assert!(table.contains("Layer (type:depth-idx)"), "{table}");
    assert!(table.contains("├─Conv2d: 1-1"), "{table}");
    assert!(table.contains("[4, 4, 8, 8]"), "{table}");
    assert!(table.contains("Total params: 283"), "{table}");
    assert!(table.contains("Trainable params: 283"), "{table}");
    let e = net.output_shape(&[4, 5, 8, 8]).unwrap_err().to_string();
    assert!(e.contains("[4, 5, 8, 8]"), "{e}");
    let seq = Sequential::new(vec![Box::new(MaxPool2d(Pool2dParams::new(2))), Box::new(Flatten::default())]);
    assert_eq!(seq.output_shape(&[2, 3, 4, 4]).unwrap().0, vec![2, 12]);
    assert_eq!(thousands(25_557_032), "25,557,032");
}

#[test]
fn optimizer_state_round_trips_for_resuming() {
    let run = |resume_at: Option<usize>| {
        let net = Small::from_fixture();
        let x = Var::constant(fixture("x"));
        let y = fixture("y");
        let mut opt = Optimizer::new(Method::adamw(), net.trainable_parameters(), 0.01, 0.05).unwrap();
        let mut sched = Scheduler::new(LrSchedule::Cosine { t_max: 6, eta_min: 0.0 }, &mut opt).unwrap();
        for step in 0..6 {
            if resume_at == Some(step) {
                // Rebuild everything from the saved state, as `--resume` does.
                let (weights, state, steps) = (net.state_dict(), opt.state_dict(), sched.steps());
                let fresh = Small::new(5);
                fresh.load_state_dict(&weights, true).unwrap();
                net.load_state_dict(&fresh.state_dict(), true).unwrap();
                opt = Optimizer::new(Method::adamw(), net.trainable_parameters(), 0.01, 0.05).unwrap();
                opt.load_state_dict(&state).unwrap();
                sched = Scheduler::new(LrSchedule::Cosine { t_max: 6, eta_min: 0.0 }, &mut opt).unwrap();
                sched.set_steps(steps, &mut opt);
            }
            opt.zero_grad();
            CrossEntropyLoss::default().forward(&net.forward(&x).unwrap(), &y).unwrap().backward().unwrap();
            opt.step().unwrap();
            sched.step(&mut opt);
        }
        net.state_dict()
            .into_iter()
            .map(|(_, t)| t.to_dtype(tensor::DType::F32).to_vec_f32().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(None), run(Some(3)), "a resumed run ends with the same weights, bitwise");
}

#[test]
fn bad_configurations_are_errors() {
    let mut rng = Rng::seed(0);
    assert!(Conv2dConfig::new(3, 8, 3).groups(2).init(&mut rng).is_err());
    assert!(Optimizer::new(Method::Sgd { momentum: 0.0, dampening: 0.0, nesterov: true }, vec![], 0.1, 0.0).is_err());
    assert!(Optimizer::new(Method::Adam { betas: (1.0, 0.9), eps: 1e-8 }, vec![], 0.1, 0.0).is_err());
    assert!(Optimizer::new(Method::adam(), vec![], -1.0, 0.0).is_err());
    assert!(Dropout::new(1.0, 0).is_err());
    let mut opt = Optimizer::new(Method::adam(), vec![], 0.1, 0.0).unwrap();
    assert!(Scheduler::new(LrSchedule::Step { step_size: 0, gamma: 0.1 }, &mut opt).is_err());
    let e = Linear::new(4, 2, true, &mut rng).unwrap().forward(&Var::constant(Tensor::zeros(&[3, 5]))).unwrap_err();
    assert!(e.to_string().contains("[3, 5]"), "{e}");
}

#[test]
fn metrics() {
    let scores = Tensor::from_vec(vec![0.1, 0.7, 0.2, 0.5, 0.3, 0.2, 0.3, 0.3, 0.4], &[3, 3]).unwrap();
    let targets = Tensor::from_vec_i64(vec![1, 1, 0], &[3]).unwrap();
    assert!((accuracy(&scores, &targets).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(topk_accuracy(&scores, &targets, 2).unwrap(), 1.0);
    let top = topk(&scores, 2).unwrap();
    assert_eq!(top.indices[2], vec![2, 0], "ties keep the lower index first");
    assert_eq!(top.values[0], vec![0.7, 0.2]);
    assert!(topk(&scores, 4).is_err());
}

#[test]
fn dropout_scales_in_training_and_passes_in_eval() {
    let d = Dropout::new(0.5, 3).unwrap();
    let x = Var::constant(Tensor::ones(&[1000]));
    let y = d.forward(&x).unwrap().value().to_vec_f32().unwrap();
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    let kept = y.iter().filter(|&&v| v == 2.0).count();
    assert!((400..600).contains(&kept), "{kept}");
    d.eval();
    assert_eq!(d.forward(&x).unwrap().value().to_vec_f32().unwrap(), vec![1.0; 1000]);
}

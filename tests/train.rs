//! The `train` crate as a library: the example program, gradient accumulation against a
//! hand-written loop, early stopping, evaluation every N batches, and a resume inside an
//! accumulation window ending with an uninterrupted run's weights.

mod common;
use common::{demo_dataset, temp_dir, tensor_bits};
use nn::{CrossEntropyLoss, Method, Module, ModuleExt, Optimizer, Var};
use resnet::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tensor::{Rng, Tensor};
use train::{
    Checkpoint, EarlyStopping, Event, FitOutcome, Monitor, OptimizerKind, SchedulerKind, StepOutcome, TrainConfig,
    Trainer,
};

/// A narrow ResNet-18 on `data` for `epochs` epochs: 6 classes x 8 training pictures, batches
/// of 8 (6 per epoch).
fn small(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        epochs,
        base_planes: 4,
        image_size: 24,
        eval_resize: Some(24),
        batch_size: 8,
        lr: 0.01,
        seed: 3,
        workers: 1,
        ..TrainConfig::default()
    }
}

/// `examples/train_folder.rs`, built by `cargo test` beside this test's executable.
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(format!("train_folder{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_example_trains_a_folder_and_writes_the_commands_metrics() {
    let dir = temp_dir("example");
    let data = demo_dataset(&dir.join("data"), 6, 2, 32);
    let out = dir.join("run");
    let o = Command::new(example_binary())
        .args(["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "2"])
        .args(["--image-size", "24", "--batch-size", "12", "--base-planes", "4"])
        .output()
        .expect("examples/train_folder.rs is built by a `cargo test` without target filters (or `cargo build --example train_folder` in the same profile)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let epochs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{stdout}");
    assert!(epochs[1].starts_with("epoch 2: train loss ") && epochs[1].contains("val acc "), "{stdout}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some(train::METRICS_HEADER));
    assert_eq!(train::METRICS_HEADER, "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    for f in train::OUTPUT_FILES {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let usage = Command::new(example_binary()).output().unwrap();
    assert!(!usage.status.success() && String::from_utf8_lossy(&usage.stderr).contains("usage: train_folder"));
}

/// Two batches accumulated are one SGD step on the mean of their gradients: the same weights,
/// bit for bit, as the loop written by hand with `nn`.
#[test]
fn accumulated_batches_make_one_step_on_their_mean_gradient() {
    let model = || {
        let mut c = Arch::Resnet18.config(3);
        c.base_planes = 4;
        let m = c.build(resnet::Init::Torchvision(5)).unwrap();
        m.train();
        m
    };
    let mut rng = Rng::seed(8);
    let batches: Vec<(Tensor, Tensor)> = (0..2)
        .map(|i| (Tensor::randn(&[4, 3, 32, 32], &mut rng), Tensor::from_vec_i64(vec![i, 1, 2, 0], &[4]).unwrap()))
        .collect();
    let sgd = |m: &resnet::ResNet| Optimizer::new(Method::sgd(0.0), m.trainable_parameters(), 0.1, 0.0).unwrap();

    let a = model();
    let opt = sgd(&a);
    let config = TrainConfig { accumulate: 2, optimizer: OptimizerKind::Sgd, ..TrainConfig::default() };
    let mut trainer = Trainer::from_parts(a, opt, config).unwrap();
    let before = trainer.model().state_dict();
    let first = trainer.step(&batches[0].0, &batches[0].1).unwrap();
    assert!(matches!(first, StepOutcome::Updated { optimizer_stepped: false, images: 4, .. }), "{first:?}");
    let unchanged = trainer.model().state_dict();
    assert_eq!(before[0].1.to_vec_f32().unwrap(), unchanged[0].1.to_vec_f32().unwrap(), "no update yet");
    let second = trainer.step(&batches[1].0, &batches[1].1).unwrap();
    assert!(matches!(second, StepOutcome::Updated { optimizer_stepped: true, .. }), "{second:?}");

    let b = model();
    let mut opt = sgd(&b);
    opt.zero_grad();
    for (x, y) in &batches {
        let loss = CrossEntropyLoss::default().forward(&b.forward(&Var::constant(x.clone())).unwrap(), y).unwrap();
        loss.mul_scalar(0.5).unwrap().backward().unwrap();
    }
    opt.step().unwrap();
    let (ta, tb) = (trainer.model().state_dict(), b.state_dict());
    assert_eq!(ta.len(), tb.len());
    for ((k, x), (_, y)) in ta.iter().zip(&tb) {
        if x.dtype() == tensor::DType::F32 {
            assert_eq!(x.to_vec_f32().unwrap(), y.to_vec_f32().unwrap(), "{k}");
        }
    }
    assert_ne!(before[0].1.to_vec_f32().unwrap(), ta[0].1.to_vec_f32().unwrap(), "the step moved the weights");
}

/// When nothing counts as an improvement, patience 2 stops after the third epoch, and the
/// run's files say so. Evaluation every 4 batches reports inside each epoch.
#[test]
fn early_stopping_and_evaluation_every_n_batches() {
    let dir = temp_dir("early");
    let data = demo_dataset(&dir.join("data"), 8, 2, 32);
    let config = TrainConfig {
        eval_every: 4,
        // Nothing can improve by more than 100 percentage points.
        early_stopping: Some(EarlyStopping { monitor: Monitor::ValAcc, patience: 2, min_delta: 1.0 }),
        ..small(&data, &dir.join("run"), 10)
    };
    let mut trainer = Trainer::new(config).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    trainer.add_callback(move |e: &Event| match e {
        Event::Evaluated { epoch, batch, metrics } => {
            log.lock().unwrap().push(format!("eval {epoch}:{batch} {}", metrics.images))
        }
        Event::EpochEnd { row, .. } => {
            assert!(row.val_top5 >= row.val_acc && row.val_top5 <= 1.0, "{row:?}");
            log.lock().unwrap().push(format!("end {}", row.epoch))
        }
        Event::EarlyStopped { epoch, stale_epochs, .. } => {
            log.lock().unwrap().push(format!("stop {epoch} {stale_epochs}"))
        }
        _ => {}
    });
    assert_eq!(trainer.fit().unwrap(), FitOutcome::EarlyStopped { epoch: 3 });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["eval 1:4 12", "end 1", "eval 2:4 12", "end 2", "eval 3:4 12", "end 3", "stop 3 2"]);
    let state = Checkpoint::read(&dir.join("run")).unwrap().state;
    assert_eq!((state.epoch, state.stale_epochs, state.rows.len()), (3, 2, 3));
}

/// Stopped inside an accumulation window, the run saves the window's start; resumed, it ends
/// with the weights of a run that was never stopped, bit for bit.
#[test]
fn a_run_stopped_inside_an_accumulation_window_resumes_to_the_same_weights() {
    let dir = temp_dir("accumulate-resume");
    let data = demo_dataset(&dir.join("data"), 8, 2, 32);
    let config = |out: &str| TrainConfig {
        accumulate: 4,
        scheduler: SchedulerKind::OneCycle,
        ..small(&data, &dir.join(out), 2)
    };
    let mut whole = Trainer::new(config("whole")).unwrap();
    assert_eq!(whole.fit().unwrap(), FitOutcome::Completed);

    let mut first = Trainer::new(config("parts")).unwrap();
    let stop = first.stop_handle();
    // 6 batches per epoch: stop after the third batch of epoch 2, inside the window 1-4.
    first.add_callback(move |e: &Event| {
        if let Event::BatchEnd { epoch: 2, batch: 3, .. } = e {
            stop.store(true, Ordering::Relaxed);
        }
    });
    assert_eq!(first.fit().unwrap(), FitOutcome::Interrupted { epoch: 2, next_batch: 0 });
    drop(first);
    let ck = Checkpoint::read(&dir.join("parts")).unwrap();
    assert_eq!(ck.state.progress.map(|p| p.next_batch), Some(0), "the window began at batch 0");
    let resumed_config = TrainConfig { out: dir.join("parts"), epochs: 2, workers: 1, ..ck.config.clone() };
    let mut resumed = Trainer::resume(resumed_config, ck).unwrap();
    assert_eq!(resumed.fit().unwrap(), FitOutcome::Completed);
    assert_eq!(
        tensor_bits(&dir.join("whole/last.safetensors")),
        tensor_bits(&dir.join("parts/last.safetensors")),
        "the resumed run's weights differ from the uninterrupted run's"
    );
}

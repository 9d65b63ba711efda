//! `resnet train`: the transfer-learning tutorial's loop, complete — data, model, optimizer and
//! schedule; per epoch a training pass and a validation pass; `best.safetensors` whenever the
//! validation accuracy improves, `last.safetensors` with the optimizer and scheduler state every
//! epoch (so `--resume` continues exactly), `metrics.csv`, `curves.png` and
//! `class_indices.json`, each written atomically. Ctrl-C stops at the next batch and saves.

use crate::error::{CliError, Result};
use crate::model_io::{meta, metadata_for};
use crate::plot::{curves_png, EpochPoint};
use data::{presets, Dataset, ImageFolder, Loader, LoaderConfig, Subset};
use nn::{CrossEntropyLoss, LrSchedule, Method, Module, ModuleExt, Optimizer, Scheduler, Var};
use resnet::{Arch, ResNet};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tensor::Tensor;

/// Every option of `resnet train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// An ImageFolder with train/ and val/ sub-folders, or one folder with --val-split
    /// (default: the built-in demo dataset, generated on first use).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: the share of each class held out for validation.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Architecture (resnet18 ... wide_resnet101_2).
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Pretrained weights (.pth or .safetensors); a head of another class count is re-initialised.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Train only the head.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// adam, adamw or sgd.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// none, step, cosine or onecycle.
    #[arg(long, default_value = "cosine")]
    pub scheduler: String,
    /// Training crop size (default: 224, or 48 on the demo dataset).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seeds the model, the shuffling and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device (`cpu`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output folder (default: runs/train, or the --resume folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Skip images that cannot be decoded (with a warning) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Where the demo dataset is generated (default: runs/demo-data).
    #[arg(long)]
    pub demo_dir: Option<PathBuf>,
}

/// The run's settings that `--resume` restores (saved as `run.json`).
#[derive(Debug, Clone, PartialEq)]
struct RunState {
    epoch: usize,
    best_acc: f64,
    best_epoch: usize,
    scheduler_steps: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Row {
    epoch: usize,
    train_loss: f64,
    train_acc: f64,
    val_loss: f64,
    val_acc: f64,
    lr: f64,
    seconds: f64,
    images_per_s: f64,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(tensor::write_atomic(path, bytes)?)
}

/// The train and validation datasets and their classes.
struct Datasets {
    train: Box<dyn Dataset>,
    val: Box<dyn Dataset>,
    classes: Vec<String>,
    /// Whether this is the built-in demo dataset.
    demo: bool,
}

fn datasets(args: &TrainArgs) -> Result<Datasets> {
    let Some(root) = &args.data else {
        let dir = args.demo_dir.clone().unwrap_or_else(|| PathBuf::from("runs/demo-data"));
        let demo = data::write_demo_dataset(&dir, &demo_config()).map_err(|e| usage(format!("demo dataset: {e}")))?;
        if !demo.reused {
            println!(
                "generated the demo dataset in {} ({} training, {} validation images)",
                dir.display(),
                demo.train_images,
                demo.val_images
            );
        }
        let train = ImageFolder::new(&demo.train).map_err(data_err)?;
        let val = ImageFolder::new(&demo.val).map_err(data_err)?;
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: true });
    };
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    if train_dir.is_dir() && val_dir.is_dir() {
        if args.val_split.is_some() {
            return Err(usage(format!("{} already has train/ and val/; drop --val-split", root.display())));
        }
        let train = ImageFolder::new(&train_dir).map_err(data_err)?;
        let val = ImageFolder::new(&val_dir).map_err(data_err)?;
        if train.classes() != val.classes() {
            return Err(usage(format!(
                "{}: train/ has classes {:?} but val/ has {:?}",
                root.display(),
                train.classes(),
                val.classes()
            )));
        }
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false });
    }
    let fraction = args.val_split.ok_or_else(|| {
        usage(format!("{}: no train/ and val/ sub-folders; pass --val-split (e.g. 0.2) to split it", root.display()))
    })?;
    let folder = ImageFolder::new(root).map_err(data_err)?;
    let split = data::split::split_indices(&folder.targets(), fraction, args.seed).map_err(data_err)?;
    if split.val.is_empty() || split.train.is_empty() {
        return Err(usage(format!(
            "{}: --val-split {fraction} leaves an empty train or validation set",
            root.display()
        )));
    }
    let classes = folder.classes().to_vec();
    let train = Subset::new(folder.clone(), split.train).map_err(data_err)?;
    let val = Subset::new(folder, split.val).map_err(data_err)?;
    Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false })
}

/// The main job's data: enough pictures of each shape that a ResNet-18 trained from scratch must
/// learn the shapes rather than memorise the pictures, small enough for a few minutes on 2 cores.
fn demo_config() -> data::DemoConfig {
    data::DemoConfig { train_per_class: 150, val_per_class: 30, width: 64, height: 64, ..data::DemoConfig::default() }
}

fn data_err(e: data::DataError) -> CliError {
    usage(e.to_string())
}

fn method(args: &TrainArgs) -> Result<Method> {
    Ok(match args.optimizer.to_ascii_lowercase().as_str() {
        "adam" => Method::adam(),
        "adamw" => Method::adamw(),
        "sgd" => Method::sgd(args.momentum),
        other => return Err(usage(format!("--optimizer {other}: expected adam, adamw or sgd"))),
    })
}

/// The schedule, and whether it steps per batch (one-cycle) rather than per epoch.
fn schedule(args: &TrainArgs, epochs: usize, steps_per_epoch: usize) -> Result<(LrSchedule, bool)> {
    Ok(match args.scheduler.to_ascii_lowercase().as_str() {
        "none" => (LrSchedule::Constant, false),
        "step" => (LrSchedule::Step { step_size: (epochs / 3).max(1), gamma: 0.1 }, false),
        "cosine" => (LrSchedule::Cosine { t_max: epochs.max(1), eta_min: 0.0 }, false),
        "onecycle" => (LrSchedule::one_cycle(args.lr, (epochs * steps_per_epoch).max(2)), true),
        other => return Err(usage(format!("--scheduler {other}: expected none, step, cosine or onecycle"))),
    })
}

fn state_json(s: &RunState, arch: &str) -> String {
    let rows: Vec<serde_json::Value> = s
        .rows
        .iter()
        .map(|r| {
            serde_json::json!([
                r.epoch,
                r.train_loss,
                r.train_acc,
                r.val_loss,
                r.val_acc,
                r.lr,
                r.seconds,
                r.images_per_s
            ])
        })
        .collect();
    serde_json::json!({
        "arch": arch, "epoch": s.epoch, "best_acc": s.best_acc, "best_epoch": s.best_epoch,
        "scheduler_steps": s.scheduler_steps, "rows": rows,
    })
    .to_string()
}

fn parse_state(text: &str, path: &Path) -> Result<RunState> {
    let bad = || usage(format!("{}: not a run state written by `resnet train`", path.display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let num = |k: &str| v[k].as_f64().ok_or_else(bad);
    let rows = v["rows"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|r| {
            let f = |i: usize| r[i].as_f64().ok_or_else(bad);
            Ok(Row {
                epoch: f(0)? as usize,
                train_loss: f(1)?,
                train_acc: f(2)?,
                val_loss: f(3)?,
                val_acc: f(4)?,
                lr: f(5)?,
                seconds: f(6)?,
                images_per_s: f(7)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RunState {
        epoch: num("epoch")? as usize,
        best_acc: num("best_acc")?,
        best_epoch: num("best_epoch")? as usize,
        scheduler_steps: num("scheduler_steps")? as usize,
        rows,
    })
}

fn metrics_csv(rows: &[Row]) -> String {
    let mut s = String::from("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s\n");
    for r in rows {
        s += &format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.8},{:.3},{:.2}\n",
            r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.lr, r.seconds, r.images_per_s
        );
    }
    s
}

/// Mean loss and accuracy of the model over a loader, in eval mode without recording.
fn evaluate(model: &ResNet, loader: &Loader, stop: &AtomicBool) -> Result<(f64, f64)> {
    model.eval();
    let _guard = nn::no_grad();
    let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
    for batch in loader.iter_epoch(0) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let batch = batch.map_err(data_err)?;
        let logits = model.forward(&Var::constant(batch.images))?;
        let loss =
            CrossEntropyLoss { reduction: nn::Reduction::Sum, label_smoothing: 0.0 }.forward(&logits, &batch.labels)?;
        loss_sum += loss.value().item()? as f64;
        correct += (nn::accuracy(&logits.value(), &batch.labels)? * batch.labels.numel() as f64).round() as usize;
        seen += batch.labels.numel();
    }
    Ok((loss_sum / seen.max(1) as f64, correct as f64 / seen.max(1) as f64))
}

/// Runs `resnet train`.
pub fn run(args: TrainArgs) -> Result<()> {
    tensor::Device::parse(&args.device)?;
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be positive"));
    }
    let out = args.out.clone().or_else(|| args.resume.clone()).unwrap_or_else(|| PathBuf::from("runs/train"));
    std::fs::create_dir_all(&out).map_err(|source| CliError::Io { path: out.clone(), source })?;
    let Datasets { train: train_ds, val: val_ds, classes, demo } = datasets(&args)?;
    let epochs = args.epochs.unwrap_or(10);
    let image_size = args.image_size.unwrap_or(if demo { 48 } else { 224 });
    if image_size < 8 {
        return Err(usage("--image-size must be at least 8"));
    }
    let arch = Arch::from_name(&args.arch)?;
    let mut model = arch.build(classes.len(), args.seed)?;
    if let Some(w) = &args.weights {
        let sd = resnet::read_weights(w)?;
        if sd.num_classes().is_some_and(|n| n != classes.len()) {
            println!(
                "{}: the head has {} classes, the data {}: the head is re-initialised",
                w.display(),
                sd.num_classes().unwrap_or(0),
                classes.len()
            );
        }
        let report = resnet::load_pretrained(&model, &sd)
            .map_err(|e| usage(format!("{}: the weights do not fit {arch}: {e}", w.display())))?;
        if !report.mismatched.is_empty() || !report.missing.is_empty() {
            model.reset_head(classes.len(), args.seed)?;
        }
    }
    if args.freeze_backbone {
        model.freeze_backbone();
    }
    let resize = image_size * 256 / 224;
    let eval_meta: Vec<(&str, String)> = vec![
        (meta::CLASSES, serde_json::to_string(&classes).expect("strings serialise")),
        (meta::RESIZE, resize.to_string()),
        (meta::CROP, image_size.to_string()),
        (meta::MEAN, serde_json::to_string(&presets::IMAGENET_MEAN).expect("floats serialise")),
        (meta::STD, serde_json::to_string(&presets::IMAGENET_STD).expect("floats serialise")),
    ];
    let metadata: HashMap<String, String> = metadata_for(arch, &model.config, &eval_meta);
    data::write_class_indices(out.join("class_indices.json"), &classes).map_err(data_err)?;

    let loader_cfg = |shuffle: bool| {
        LoaderConfig::new(args.batch_size)
            .shuffle(shuffle)
            .num_workers(args.workers)
            .seed(args.seed)
            .skip_bad_images(args.skip_bad_images)
    };
    // The demo's classes are shapes: a crop must keep most of the picture to show one, so the
    // demo samples crops of 35-100% of the area instead of torchvision's 8-100%.
    let scale = if demo { (0.35, 1.0) } else { (0.08, 1.0) };
    let train_transform = presets::train(image_size, scale).map_err(data_err)?;
    let train_loader = Loader::new(train_ds, train_transform, loader_cfg(true)).map_err(data_err)?;
    let val_loader =
        Loader::new(val_ds, presets::imagenet_eval(resize, image_size).map_err(data_err)?, loader_cfg(false))
            .map_err(data_err)?;
    let steps_per_epoch = train_loader.len().max(1);
    let mut opt = Optimizer::new(method(&args)?, model.trainable_parameters(), args.lr, args.weight_decay)?;
    let (sched_kind, per_batch) = schedule(&args, epochs, steps_per_epoch)?;
    let mut sched = Scheduler::new(sched_kind, &mut opt)?;
    let mut state = RunState { epoch: 0, best_acc: -1.0, best_epoch: 0, scheduler_steps: 0, rows: Vec::new() };

    if let Some(dir) = &args.resume {
        let state_path = dir.join("run.json");
        let text =
            std::fs::read_to_string(&state_path).map_err(|source| CliError::Io { path: state_path.clone(), source })?;
        state = parse_state(&text, &state_path)?;
        resnet::load_strict(&model, &resnet::read_weights(dir.join("last.safetensors"))?)?;
        let opt_state = resnet::read_weights(dir.join("last_optimizer.safetensors"))?;
        opt.load_state_dict(&opt_state.entries)?;
        sched.set_steps(state.scheduler_steps, &mut opt);
        println!(
            "resuming {} after epoch {} (best validation accuracy {:.1}%)",
            dir.display(),
            state.epoch,
            100.0 * state.best_acc.max(0.0)
        );
    }
    if state.epoch >= epochs {
        println!("the run already has {} epochs; nothing to do (raise --epochs to continue)", state.epoch);
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving falls through to the default handler's exit.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
        });
    }
    let terminal = std::io::stderr().is_terminal();
    println!(
        "training {arch} on {} images of {} classes ({} for validation), {epochs} epochs, batch {}, {image_size}px",
        train_loader.num_samples(),
        classes.len(),
        val_loader.num_samples(),
        args.batch_size
    );
    for epoch in state.epoch + 1..=epochs {
        model.train();
        let started = Instant::now();
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
                    .expect("a valid template"),
            );
            b.set_prefix(format!("{epoch}/{epochs}"));
            b
        });
        let (mut loss_sum, mut correct, mut seen, mut skipped) = (0f64, 0usize, 0usize, 0usize);
        let lr = opt.lr();
        for (batch_index, batch) in train_loader.iter_epoch(epoch as u64).enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let batch = batch.map_err(data_err)?;
            // The loader already warned about each one; the epoch line reports the count.
            skipped += batch.skipped.len();
            let n = batch.labels.numel();
            opt.zero_grad();
            let logits = model.forward(&Var::constant(batch.images))?;
            let loss = CrossEntropyLoss::default().forward(&logits, &batch.labels)?;
            let l = loss.value().item()? as f64;
            if !l.is_finite() {
                return Err(usage(format!(
                    "the loss became {l} in epoch {epoch}, batch {}; last.safetensors keeps the previous epoch",
                    batch_index + 1
                )));
            }
            loss.backward()?;
            opt.step()?;
            if per_batch {
                sched.step(&mut opt);
            }
            loss_sum += l * n as f64;
            correct += (nn::accuracy(&logits.value(), &batch.labels)? * n as f64).round() as usize;
            seen += n;
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!(
                    "loss {:.4} {:.1} img/s",
                    loss_sum / seen as f64,
                    seen as f64 / started.elapsed().as_secs_f64()
                ));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if stop.load(Ordering::Relaxed) {
            save_last(&out, &model, &opt, &metadata, &state, arch)?;
            println!(
                "interrupted in epoch {epoch}: saved {} (resume with --resume {})",
                out.join("last.safetensors").display(),
                out.display()
            );
            return Ok(());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_acc) = evaluate(&model, &val_loader, &stop)?;
        if !per_batch {
            sched.step(&mut opt);
        }
        let row = Row {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            lr,
            seconds: started.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_seconds.max(1e-9),
        };
        state.rows.push(row);
        state.epoch = epoch;
        state.scheduler_steps = sched.steps();
        if val_acc > state.best_acc {
            state.best_acc = val_acc;
            state.best_epoch = epoch;
            resnet::write_safetensors(out.join("best.safetensors"), &model.state_dict(), &metadata)?;
        }
        save_last(&out, &model, &opt, &metadata, &state, arch)?;
        println!(
            "epoch {epoch}/{epochs}  train loss {:.4} acc {:.1}%  val loss {:.4} acc {:.1}%  lr {:.2e}  {:.1}s  {:.1} img/s",
            row.train_loss,
            100.0 * row.train_acc,
            row.val_loss,
            100.0 * row.val_acc,
            row.lr,
            row.seconds,
            row.images_per_s
        );
        if skipped > 0 {
            println!("epoch {epoch}: skipped {skipped} unreadable image(s) (--skip-bad-images)");
        }
    }
    println!(
        "best validation accuracy: {:.1}% (epoch {}); chance is {:.1}%; outputs in {}",
        100.0 * state.best_acc,
        state.best_epoch,
        100.0 / classes.len() as f64,
        out.display()
    );
    Ok(())
}

/// Everything `--resume` needs, each file written atomically: the weights, the optimizer's
/// state, the run state (epoch, best accuracy, schedule position, metrics), and the reports.
fn save_last(
    out: &Path,
    model: &ResNet,
    opt: &Optimizer,
    metadata: &HashMap<String, String>,
    state: &RunState,
    arch: Arch,
) -> Result<()> {
    resnet::write_safetensors(out.join("last.safetensors"), &model.state_dict(), metadata)?;
    let opt_state: Vec<(String, Tensor)> = opt.state_dict();
    resnet::write_safetensors(out.join("last_optimizer.safetensors"), &opt_state, &HashMap::new())?;
    write(&out.join("metrics.csv"), metrics_csv(&state.rows).as_bytes())?;
    let points: Vec<EpochPoint> = state
        .rows
        .iter()
        .map(|r| EpochPoint {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_acc: r.train_acc,
            val_loss: r.val_loss,
            val_acc: r.val_acc,
        })
        .collect();
    let png = curves_png(&points).map_err(|e| usage(format!("drawing curves.png: {e}")))?;
    write(&out.join("curves.png"), &png)?;
    // The run state last: it names the epoch that the files above belong to.
    write(&out.join("run.json"), state_json(state, arch.name()).as_bytes())
}

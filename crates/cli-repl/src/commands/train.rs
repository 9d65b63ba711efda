//! `resnet train`: the command-line face of the `train` crate. It parses the options, merges
//! them with a resumed run's settings, prepares the demo dataset, and draws the run's events as
//! progress bars and one line per epoch; the loop, the checkpoints (crash-safe, bit-for-bit
//! resumable) and the reports are [`train::Trainer`]'s.

use crate::error::{CliError, Result};
use resnet::Arch;
use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use train::dist::Collective;
use train::{
    demo, Checkpoint, EarlyStopping, Event, FitOutcome, Monitor, OnNonFinite, OptimizerKind, SchedulerKind,
    StepOutcome, TrainConfig, TrainError, Trainer,
};

/// Every option of `resnet train`. The settings that shape the run (`--arch` to `--seed`) are
/// optional so that `--resume` can tell what was given: a resumed run takes the checkpoint's
/// settings, and a given one that differs is an error rather than a silently different run.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// An ImageFolder with train/ and val/ sub-folders, or one folder with --val-split
    /// (default: the built-in demo dataset, generated on first use).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: the share of each class held out for validation.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Architecture (resnet18 ... wide_resnet101_2) [default: resnet18].
    #[arg(long)]
    pub arch: Option<String>,
    /// Stem width, for reduced-width models [default: 64, torchvision's; the demo preset: 16].
    #[arg(long)]
    pub base_planes: Option<usize>,
    /// Pretrained weights (.pth or .safetensors); a head of another class count is re-initialised.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Train only the head.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Epochs [default: 10, the demo preset's 13, or the resumed run's].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch [default: 32; the demo preset: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (one-cycle: the peak) [default: 0.001; the demo preset: 0.01].
    #[arg(long)]
    pub lr: Option<f64>,
    /// adam, adamw or sgd [default: adam].
    #[arg(long, value_parser = str::parse::<OptimizerKind>)]
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// none, step, cosine or onecycle [default: cosine; the demo preset: onecycle].
    #[arg(long, value_parser = str::parse::<SchedulerKind>)]
    pub scheduler: Option<SchedulerKind>,
    /// Training crop size [default: 224, or the demo preset's].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// RandomResizedCrop's range of crop areas, as fractions of the picture: `MIN,MAX`
    /// [default: 0.08,1 as torchvision's, or the demo preset's].
    #[arg(long, value_parser = parse_crop_scale)]
    pub crop_scale: Option<(f64, f64)>,
    /// Validation and prediction: the shorter side is resized to this before the centre crop
    /// of --image-size [default: image-size * 256 / 224, as torchvision's 256 -> 224; on the
    /// demo, the image size itself, so the whole picture is seen].
    #[arg(long)]
    pub eval_resize: Option<usize>,
    /// Gradient accumulation: one optimizer step every N batches, on their mean gradient
    /// (an effective batch of N x --batch-size) [default: 1].
    #[arg(long)]
    pub accumulate: Option<usize>,
    /// Under mpirun: batch norm over every process's batch together (SyncBatchNorm), so N
    /// processes x --batch-size train as one process with N times the batch.
    #[arg(long)]
    pub sync_bn: bool,
    /// Under mpirun: the gradients are all-reduced in buckets of about this many MiB, each as
    /// soon as the backward pass has finished it (DDP's bucket_cap_mb).
    #[arg(long, default_value_t = train::dist::BUCKET_CAP_MB, value_name = "MIB")]
    pub bucket_cap_mb: f64,
    /// Seeds the model, the shuffling and the augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Device: `cpu`, or `wgpu` / `cuda` / `gpu` in a build with the GPU features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output folder (default: runs/train, or runs/train2, ... when that holds a run; or the
    /// --resume folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this folder (its settings are reused).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also checkpoint every N batches inside an epoch (0: only at the end of each epoch).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Also evaluate on the validation set every N batches (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Early stopping: end the run after N epochs in a row without --monitor improving.
    #[arg(long, value_name = "N")]
    pub early_stopping: Option<usize>,
    /// What early stopping watches: val_loss, val_acc or val_top5.
    #[arg(long, default_value = "val_loss", value_parser = str::parse::<Monitor>)]
    pub monitor: Monitor,
    /// Early stopping: the least change of --monitor that counts as an improvement.
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,
    /// What a non-finite loss or gradient does: `stop` (naming the epoch and batch, keeping the
    /// last checkpoint) or `skip` (that batch makes no update; the count is reported).
    #[arg(long, default_value = "stop", value_parser = str::parse::<OnNonFinite>)]
    pub on_nonfinite: OnNonFinite,
    /// Skip images that cannot be decoded (with a warning) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Where the demo dataset is generated (default: runs/demo-data).
    #[arg(long)]
    pub demo_dir: Option<PathBuf>,
    /// Fault injection for tests: make the loss of these batches NaN (`EPOCH:BATCH,...`, 1-based).
    #[arg(long, hide = true)]
    pub inject_nonfinite: Option<String>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// The run's settings: the given options over the resumed run's (a conflict is an error) over
/// the defaults (the demo preset's without `--data`).
fn resolve(args: &TrainArgs, saved: Option<&TrainConfig>) -> Result<TrainConfig> {
    fn pick<T: PartialEq + std::fmt::Debug + Clone>(
        flag: &str,
        given: Option<T>,
        saved: Option<T>,
        default: T,
    ) -> Result<T> {
        match (given, saved) {
            (Some(g), Some(s)) if g != s => Err(usage(format!(
                "--{flag} {g:?} differs from the resumed run's {s:?}; drop --{flag} to continue the run as it was \
                 started, or start a new run in another --out"
            ))),
            (Some(v), _) | (None, Some(v)) => Ok(v),
            (None, None) => Ok(default),
        }
    }
    let s = saved;
    let data = pick("data", args.data.clone().map(Some), s.map(|s| s.data.clone()), None)?;
    let d = if data.is_none() { TrainConfig::demo() } else { TrainConfig::default() };
    let arch = args.arch.as_deref().map(Arch::from_name).transpose()?;
    Ok(TrainConfig {
        val_split: pick("val-split", args.val_split.map(Some), s.map(|s| s.val_split), None)?,
        demo_dir: pick("demo-dir", args.demo_dir.clone().map(Some), s.map(|s| s.demo_dir.clone()), None)?,
        arch: pick("arch", arch, s.map(|s| s.arch), d.arch)?,
        base_planes: pick("base-planes", args.base_planes, s.map(|s| s.base_planes), d.base_planes)?,
        freeze_backbone: args.freeze_backbone || s.is_some_and(|s| s.freeze_backbone),
        batch_size: pick("batch-size", args.batch_size, s.map(|s| s.batch_size), d.batch_size)?,
        lr: pick("lr", args.lr, s.map(|s| s.lr), d.lr)?,
        optimizer: pick("optimizer", args.optimizer, s.map(|s| s.optimizer), d.optimizer)?,
        momentum: pick("momentum", args.momentum, s.map(|s| s.momentum), d.momentum)?,
        weight_decay: pick("weight-decay", args.weight_decay, s.map(|s| s.weight_decay), d.weight_decay)?,
        scheduler: pick("scheduler", args.scheduler, s.map(|s| s.scheduler), d.scheduler)?,
        image_size: pick("image-size", args.image_size, s.map(|s| s.image_size), d.image_size)?,
        seed: pick("seed", args.seed, s.map(|s| s.seed), d.seed)?,
        crop_scale: pick("crop-scale", args.crop_scale.map(Some), s.map(|s| s.crop_scale), d.crop_scale)?,
        // The demo sees the whole picture at any --image-size.
        eval_resize: pick(
            "eval-resize",
            args.eval_resize.map(Some),
            s.map(|s| s.eval_resize),
            data.is_none().then_some(args.image_size.unwrap_or(d.image_size)),
        )?,
        accumulate: pick("accumulate", args.accumulate, s.map(|s| s.accumulate), d.accumulate)?,
        sync_bn: args.sync_bn || s.is_some_and(|s| s.sync_bn),
        epochs: d.epochs,
        data,
        ..TrainConfig::default()
    })
}

/// `MIN,MAX` with 0 < MIN <= MAX <= 1.
fn parse_crop_scale(text: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("expected MIN,MAX (e.g. 0.08,1), got {text:?}"));
    };
    let parse = |v: &str| v.parse::<f64>().map_err(|_| format!("{v:?} is not a number"));
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
        return Err(format!("expected 0 < MIN <= MAX <= 1, got {lo},{hi}"));
    }
    Ok((lo, hi))
}

/// `--inject-nonfinite 2:3,4:1` as 1-based (epoch, batch) pairs.
fn injected_faults(args: &TrainArgs) -> Result<Vec<(usize, usize)>> {
    let Some(spec) = &args.inject_nonfinite else { return Ok(Vec::new()) };
    spec.split(',')
        .map(|item| {
            item.split_once(':')
                .and_then(|(e, b)| Some((e.trim().parse().ok()?, b.trim().parse().ok()?)))
                .ok_or_else(|| usage(format!("--inject-nonfinite {spec}: expected EPOCH:BATCH,...")))
        })
        .collect()
}

/// The default output folder: `runs/train`, or the first of `runs/train2`, `runs/train3`, ...
/// that holds no run, so that running the main job twice keeps the first run's results.
fn default_out() -> PathBuf {
    let base = PathBuf::from("runs");
    (1..)
        .map(|i| if i == 1 { base.join("train") } else { base.join(format!("train{i}")) })
        .find(|d| !Checkpoint::exists_in(d))
        .expect("an unbounded range")
}

/// A library error, with what the user can do about it in this command's flags.
fn explain(e: TrainError) -> CliError {
    match e {
        TrainError::HoldsRun { out } => usage(format!(
            "{} already holds a run; continue it with --resume {}, or choose another --out",
            out.display(),
            out.display()
        )),
        TrainError::Unwritable { source, .. } => {
            usage(format!("{source}\nnothing was trained; choose a writable --out"))
        }
        e @ TrainError::Save { .. } => {
            let TrainError::Save { out, .. } = &e else { unreachable!() };
            let out = out.display().to_string();
            usage(format!("{e} with --resume {out}"))
        }
        e @ TrainError::NonFinite { .. } => {
            usage(format!("{e}. Lower --lr, or pass --on-nonfinite skip to skip such batches"))
        }
        e @ TrainError::BadImages { .. } => {
            usage(format!("{e}\nfix or remove them, or pass --skip-bad-images to train on the rest"))
        }
        TrainError::Resnet(e) => e.into(),
        TrainError::Nn(e) => e.into(),
        TrainError::Tensor(e) => e.into(),
        other => usage(other.to_string()),
    }
}

/// Draws the run's events: an indicatif bar per epoch on a terminal, and the lines a log keeps.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
    epochs: usize,
    classes: usize,
    out: PathBuf,
}

impl Progress {
    fn on_event(&mut self, event: &Event<'_>) {
        match event {
            Event::EpochStarted { epoch, epochs, batches, first_batch } if self.terminal => {
                let b = indicatif::ProgressBar::new(*batches as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "epoch {prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
                    )
                    .expect("a valid template"),
                );
                b.set_prefix(format!("{epoch}/{epochs}"));
                b.set_position(*first_batch as u64);
                self.bar = Some(b);
            }
            Event::BatchEnd { epoch, batch, outcome, progress, images_per_s, .. } => {
                if let StepOutcome::NonFinite { why } = outcome {
                    eprintln!("warning: {why} in epoch {epoch}, batch {batch}: no update from it");
                }
                if let Some(b) = &self.bar {
                    b.set_position(*batch as u64);
                    b.set_message(format!("loss {:.4} {images_per_s:.1} img/s", progress.mean_loss()));
                }
            }
            Event::Evaluated { epoch, batch, metrics } => self.println(format!(
                "epoch {epoch} batch {batch}: val loss {:.4} acc {:.1}%",
                metrics.loss,
                100.0 * metrics.acc
            )),
            Event::EpochEnd { row, skipped_train_images, skipped_val_images, skipped_batches, .. } => {
                self.finish();
                // Top-5 says something only when it is far from all the classes.
                let top5 =
                    if self.classes >= 10 { format!(" top-5 {:.1}%", 100.0 * row.val_top5) } else { String::new() };
                println!(
                    "epoch {}/{}  train loss {:.4} acc {:.1}%  val loss {:.4} acc {:.1}%{top5}  lr {:.2e}  {:.1}s  {:.1} \
                     img/s",
                    row.epoch,
                    self.epochs,
                    row.train_loss,
                    100.0 * row.train_acc,
                    row.val_loss,
                    100.0 * row.val_acc,
                    row.lr,
                    row.seconds,
                    row.images_per_s
                );
                let epoch = row.epoch;
                if skipped_train_images + skipped_val_images > 0 {
                    println!(
                        "epoch {epoch}: skipped {} unreadable image(s) ({skipped_train_images} in training, \
                         {skipped_val_images} in validation)",
                        skipped_train_images + skipped_val_images
                    );
                }
                if *skipped_batches > 0 {
                    println!("epoch {epoch}: skipped {skipped_batches} batch(es) with a non-finite loss or gradient");
                }
            }
            Event::SearchingBadImages { first } => {
                self.finish();
                eprintln!("{first}\nlooking for other unreadable images ...");
            }
            Event::EarlyStopped { epoch, best, stale_epochs } => println!(
                "early stopping after epoch {epoch}: no improvement in {stale_epochs} epoch(s) (best {best:.4})"
            ),
            Event::Interrupted { epoch, next_batch, checkpoint } => {
                self.finish();
                println!(
                    "interrupted in epoch {epoch} after batch {next_batch}: saved {} (continue with --resume {})",
                    checkpoint.display(),
                    self.out.display()
                );
            }
            _ => {}
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// After an error: the bar stays where it stopped.
    fn abandon(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

/// The per-class report of the best weights on the validation set: `report.json` and
/// `confusion.png` in the run folder, and (with `print`) the table.
fn final_report(trainer: &mut Trainer, print: bool) -> Result<()> {
    trainer.restore_best().map_err(explain)?;
    let Some(report) = trainer.class_report().map_err(explain)? else { return Ok(()) };
    if trainer.rank() != 0 {
        return Ok(());
    }
    report.write(&trainer.config().out).map_err(explain)?;
    if print {
        println!("the best weights on the validation set:\n{}", report.table());
    }
    Ok(())
}

/// The processes training together: the ones `mpirun` started (in a build with the `mpi`
/// feature), else this one alone.
fn connect() -> Result<Rc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if train::dist::Mpi::launched() {
        return Ok(Rc::new(train::dist::Mpi::init().map_err(explain)?));
    }
    Ok(Rc::new(train::dist::SingleProcess))
}

/// Whether a finished run still needs its per-class report (a kill can come before or between
/// its two files): rank 0's folder decides for every process.
fn report_missing(trainer: &Trainer) -> Result<bool> {
    let written = ["report.json", "confusion.png"].iter().all(|f| trainer.config().out.join(f).is_file());
    let mut missing = [f32::from(u8::from(!written))];
    trainer.collective().broadcast(&mut missing, 0).map_err(explain)?;
    Ok(missing[0] > 0.0)
}

/// The run of a process other than rank 0: the same collective calls as rank 0's, no output.
fn finish_quietly(trainer: &mut Trainer) -> Result<()> {
    match trainer.fit().map_err(explain)? {
        FitOutcome::Completed | FitOutcome::EarlyStopped { .. } => final_report(trainer, false),
        FitOutcome::AlreadyDone { epochs } if epochs > 0 && report_missing(trainer)? => final_report(trainer, false),
        _ => Ok(()),
    }
}

/// Runs `resnet train`; under `mpirun`, as one process of a data-parallel run, where a failure
/// in any process ends them all, naming its rank.
pub fn run(args: TrainArgs) -> Result<()> {
    let collective = connect()?;
    if collective.world_size() == 1 {
        return run_in(args, collective);
    }
    let rank = collective.rank();
    match run_in(args, collective.clone()) {
        Ok(()) => collective.barrier().map_err(explain),
        Err(e) => {
            eprintln!("error in rank {rank} of {}: {e}", collective.world_size());
            collective.abort(1)
        }
    }
}

fn run_in(args: TrainArgs, collective: Rc<dyn Collective>) -> Result<()> {
    let leader = collective.rank() == 0;
    let device = tensor::Device::parse(&args.device)?;
    let resumed = match &args.resume {
        Some(_) if args.weights.is_some() => {
            return Err(usage("--weights starts a run; a resumed run continues from its checkpoint's weights"))
        }
        Some(dir) => Some(Checkpoint::read(dir).map_err(explain)?),
        None => None,
    };
    let mut config = resolve(&args, resumed.as_ref().map(|c| &c.config))?;
    let demo = config.data.is_none();
    config.epochs = args.epochs.or(resumed.as_ref().map(|c| c.state.epochs)).unwrap_or(config.epochs);
    config.out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => default_out(),
    };
    config.weights = args.weights.clone();
    config.workers = args.workers;
    config.device = device;
    config.save_every = args.save_every;
    config.on_nonfinite = args.on_nonfinite;
    config.skip_bad_images = args.skip_bad_images;
    config.eval_every = args.eval_every;
    config.bucket_cap_mb = args.bucket_cap_mb;
    config.early_stopping = args.early_stopping.map(|patience| EarlyStopping {
        monitor: args.monitor,
        patience,
        min_delta: args.min_delta,
    });
    config.inject_nonfinite = injected_faults(&args)?;
    config.validate().map_err(explain)?;
    // Checked before the demo is generated: a second run into the same folder fails at once.
    if resumed.is_none() && Checkpoint::exists_in(&config.out) {
        return Err(explain(TrainError::HoldsRun { out: config.out.clone() }));
    }
    if demo && leader {
        let dir = demo::dir(config.demo_dir.as_deref());
        match demo::prepare(config.demo_dir.as_deref()).map_err(explain)? {
            demo::Prepared::Reused => {}
            demo::Prepared::Generated { train_images, val_images, replaced } => {
                if replaced {
                    println!("replacing the demo dataset in {} (generated with other settings)", dir.display());
                }
                println!(
                    "generated the demo dataset in {} ({train_images} training, {val_images} validation images)",
                    dir.display()
                );
            }
        }
    }
    // The other processes wait for rank 0's demo dataset.
    collective.barrier().map_err(explain)?;
    let mut trainer = match resumed {
        Some(ck) => {
            let state = ck.state.clone();
            let dir = args.resume.clone().unwrap_or_default();
            let trainer = Trainer::resume_distributed(config, ck, collective.clone()).map_err(explain)?;
            let within = state.progress.map(|p| format!(", batch {} of epoch {}", p.next_batch, state.epoch + 1));
            leader.then(|| {
                println!(
                    "resuming {} after epoch {}{} (best validation accuracy {:.1}%)",
                    dir.display(),
                    state.epoch,
                    within.unwrap_or_default(),
                    100.0 * state.best_acc.max(0.0)
                )
            });
            trainer
        }
        None => Trainer::new_distributed(config, collective.clone()).map_err(explain)?,
    };
    if !leader {
        // The other processes train in silence: rank 0 speaks for the run.
        return finish_quietly(&mut trainer);
    }
    if collective.world_size() > 1 {
        println!(
            "data-parallel over {} processes: a global batch of {}",
            collective.world_size(),
            collective.world_size() * trainer.config().batch_size
        );
    }
    if let (Some((theirs, ours)), Some(w)) = (trainer.reinitialised_head(), &args.weights) {
        if theirs != 0 && theirs != ours {
            println!("{}: the head has {theirs} classes, the data {ours}: the head is re-initialised", w.display());
        }
    }
    let stop = trainer.stop_handle();
    // A second Ctrl-C while saving falls through to an immediate exit: every file is written
    // atomically, so even that leaves each one complete.
    let _ = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    let c = trainer.config().clone();
    let classes = trainer.classes().to_vec();
    let progress = Rc::new(RefCell::new(Progress {
        bar: None,
        terminal: std::io::stderr().is_terminal(),
        epochs: c.epochs,
        classes: classes.len(),
        out: c.out.clone(),
    }));
    let drawer = progress.clone();
    trainer.add_callback(move |e: &Event| {
        if let Event::FitStarted { train_images, val_images, classes, epochs, .. } = e {
            let width = if c.base_planes == 64 {
                String::new()
            } else {
                format!(" at stem width {} (torchvision's: 64)", c.base_planes)
            };
            println!(
                "training {}{width} on {train_images} images of {} classes ({val_images} for validation), {epochs} \
                 epochs, batch {}, {}px",
                c.arch,
                classes.len(),
                c.batch_size,
                c.image_size
            );
        }
        drawer.borrow_mut().on_event(e);
    });
    let outcome = trainer.fit();
    progress.borrow_mut().abandon();
    match outcome.map_err(explain)? {
        FitOutcome::AlreadyDone { epochs } => {
            println!("the run already has {epochs} epochs; nothing to do (raise --epochs to continue)");
            // A run killed after its last epoch but before its report gets one now.
            if epochs > 0 && report_missing(&trainer)? {
                final_report(&mut trainer, false)?;
            }
            return Ok(());
        }
        FitOutcome::Interrupted { .. } => return Ok(()),
        FitOutcome::Completed | FitOutcome::EarlyStopped { .. } => final_report(&mut trainer, true)?,
    }
    let (state, out) = (trainer.state(), &trainer.config().out);
    println!(
        "best validation accuracy: {:.1}% (epoch {}); chance is {:.1}%; outputs in {}",
        100.0 * state.best_acc,
        state.best_epoch,
        100.0 / classes.len() as f64,
        out.display()
    );
    if demo {
        let val = demo::dir(trainer.config().demo_dir.as_deref()).join("val");
        println!(
            "try it on pictures it has not trained on: resnet predict --weights {} {}",
            out.join("best.safetensors").display(),
            val.join(&classes[0]).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(argv: &[&str]) -> TrainArgs {
        Cli::try_parse_from(std::iter::once("train").chain(argv.iter().copied())).unwrap().args
    }

    fn settings(argv: &[&str]) -> TrainConfig {
        resolve(&args(argv), None).unwrap()
    }

    #[test]
    fn the_demo_has_its_preset_and_a_users_folder_has_torchvisions_defaults() {
        let demo = settings(&[]);
        assert_eq!(
            (demo.base_planes, demo.batch_size, demo.lr, demo.scheduler, demo.image_size, demo.epochs),
            (16, 64, 1e-2, SchedulerKind::OneCycle, 48, 13)
        );
        assert_eq!((demo.crop_scale, demo.eval_resize), (Some((0.8, 1.0)), Some(48)));
        let own = settings(&["--data", "photos"]);
        assert_eq!(
            (own.base_planes, own.batch_size, own.lr, own.scheduler, own.image_size, own.epochs),
            (64, 32, 1e-3, SchedulerKind::Cosine, 224, 10)
        );
        assert_eq!((own.crop_scale, own.eval_resize), (Some((0.08, 1.0)), None));
        // Every preset value is a flag a user's run can pass.
        let asked =
            settings(&["--data", "photos", "--crop-scale", "0.5,0.9", "--eval-resize", "64", "--image-size", "56"]);
        assert_eq!((asked.crop_scale, asked.eval_resize, asked.image_size), (Some((0.5, 0.9)), Some(64), 56));
        let demo_small = settings(&["--image-size", "32"]);
        assert_eq!(demo_small.eval_resize, Some(32), "the demo sees the whole picture at any size");
    }

    #[test]
    fn crop_scales_and_names_are_checked() {
        assert_eq!(parse_crop_scale("0.08,1"), Ok((0.08, 1.0)));
        assert_eq!(parse_crop_scale(" 0.35 , 1.0 "), Ok((0.35, 1.0)));
        for bad in ["0.5", "0,1", "0.9,0.5", "0.5,1.5", "a,1", "0.1,0.2,0.3"] {
            assert!(parse_crop_scale(bad).is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["train", "--crop-scale", "1,0.5"]).is_err());
        let e = Cli::try_parse_from(["train", "--optimizer", "rmsprop"]).err().unwrap().to_string();
        assert!(e.contains("expected adam, adamw, sgd"), "{e}");
        assert_eq!(args(&["--optimizer", "AdamW"]).optimizer, Some(OptimizerKind::AdamW));
    }

    /// A resumed run takes the checkpoint's settings; a flag that differs from them is refused.
    #[test]
    fn a_resumed_run_keeps_its_settings() {
        let saved = TrainConfig { lr: 0.05, accumulate: 2, ..settings(&["--data", "photos"]) };
        let resumed = resolve(&args(&[]), Some(&saved)).unwrap();
        assert_eq!((resumed.lr, resumed.accumulate, resumed.data), (0.05, 2, Some("photos".into())));
        let e = resolve(&args(&["--lr", "0.1"]), Some(&saved)).unwrap_err().to_string();
        assert!(e.contains("--lr 0.1 differs from the resumed run's 0.05"), "{e}");
    }

    /// A checkpoint written before --crop-scale / --eval-resize existed resumes with the
    /// behaviour it was started with.
    #[test]
    fn older_checkpoints_keep_their_crops() {
        let mut json = serde_json::to_value(settings(&[])).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("crop_scale");
        map.remove("eval_resize");
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!((old.crop_scale, old.eval_resize), (None, None));
        let resumed = resolve(&args(&[]), Some(&old)).unwrap();
        assert_eq!((resumed.crop_scale, resumed.eval_resize), (None, None));
        assert_eq!(demo::legacy_crop_scale(true), (0.35, 1.0));
    }
}

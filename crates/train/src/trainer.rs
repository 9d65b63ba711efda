//! [`Trainer`]: the model, its optimizer and schedule, the loaders and the run's state, and the
//! loop over them.

use crate::datasets::{self, Datasets};
use crate::dist::{Collective, GradientBuckets, SingleProcess};
use crate::plot::{curves_png, EpochPoint};
use crate::state::keys;
use crate::{
    config_err, demo, metrics_csv, Callback, Checkpoint, ClassReport, EpochRow, Event, Monitor, OnNonFinite,
    OptimizerKind, Progress, Result, RunState, SchedulerKind, TrainConfig, TrainError, OUTPUT_FILES,
};
use data::{presets, DataError, Loader, LoaderConfig};
use nn::{CrossEntropyLoss, LrSchedule, Method, Module, ModuleExt, Optimizer, Scheduler, Var};
use resnet::weights::meta;
use resnet::{Init, ResNet};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tensor::Tensor;

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The batch's gradients were computed and applied, or accumulated toward the next update.
    Updated {
        /// The batch's mean loss.
        loss: f64,
        /// Correct top-1 predictions (train-mode forward).
        correct: usize,
        /// Images in the batch.
        images: usize,
        /// Whether the optimizer stepped (always, without gradient accumulation).
        optimizer_stepped: bool,
    },
    /// The loss or a gradient was not finite: no update was made from this batch, nor from the
    /// batches accumulated with it.
    NonFinite {
        /// What became non-finite ("the loss became NaN", ...).
        why: String,
    },
}

/// One validation pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy.
    pub acc: f64,
    /// Top-5 accuracy (top-k, k = the class count, when there are fewer than 5 classes).
    pub top5: f64,
    /// Images evaluated.
    pub images: usize,
    /// Images skipped as unreadable.
    pub skipped: usize,
}

/// How [`Trainer::fit`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitOutcome {
    /// Every planned epoch is done.
    Completed,
    /// The run already had its planned epochs: nothing was trained.
    AlreadyDone {
        /// Its completed epochs.
        epochs: usize,
    },
    /// Early stopping ended it after `epoch`.
    EarlyStopped {
        /// The last epoch trained.
        epoch: usize,
    },
    /// The stop flag ended it; the checkpoint holds the position, to resume from.
    Interrupted {
        /// 1-based epoch.
        epoch: usize,
        /// The next batch's position.
        next_batch: usize,
    },
}

/// The data of a run built by [`Trainer::new`].
struct RunData {
    train: Loader,
    val: Loader,
    classes: Vec<String>,
    demo: bool,
    /// The metadata of every weight file the run writes (architecture, classes, transform).
    metadata: HashMap<String, String>,
}

/// A training run: Lightning's `Trainer` for this stack. See the crate docs for an example.
pub struct Trainer {
    config: TrainConfig,
    model: ResNet,
    optimizer: Optimizer,
    scheduler: Scheduler,
    /// Whether the schedule steps with the optimizer (one-cycle) rather than per epoch.
    per_step_schedule: bool,
    params: Vec<Var>,
    /// How the gradients are packed for the all-reduce of a data-parallel run.
    buckets: GradientBuckets,
    data: Option<RunData>,
    state: RunState,
    callbacks: Vec<Box<dyn Callback>>,
    stop: Arc<AtomicBool>,
    /// Batches whose gradients are accumulated but not yet applied.
    pending: usize,
    /// With gradient accumulation: the batch-norm statistics when the current window began (its
    /// forwards move them), restored when a stop inside the window saves the window's start.
    window_buffers: Vec<(Var, Tensor)>,
    reinitialised_head: Option<(usize, usize)>,
    /// The processes training together (one, without a launcher).
    collective: std::rc::Rc<dyn Collective>,
}

impl Trainer {
    /// A new run as `config` describes it: opens the data, builds the model (and loads
    /// `weights`), the optimizer, the schedule and the loaders, creates the output folder and
    /// writes `class_indices.json` there (so that an unwritable folder fails before any
    /// training). A folder that already holds a run is refused ([`TrainError::HoldsRun`]).
    pub fn new(config: TrainConfig) -> Result<Trainer> {
        Trainer::build(config, None, std::rc::Rc::new(SingleProcess))
    }

    /// [`Trainer::new`] as one process of a data-parallel run (DistributedDataParallel's
    /// semantics): rank 0's initial weights go to every process, each trains on its shard of
    /// every epoch (so the global batch is `world_size x batch_size`), the gradients are
    /// averaged over the processes before each update, validation is split over them and its
    /// figures summed, and only rank 0 writes files. Batch norm keeps per-process statistics
    /// (DDP's default; there is no SyncBatchNorm yet).
    pub fn new_distributed(config: TrainConfig, collective: std::rc::Rc<dyn Collective>) -> Result<Trainer> {
        Trainer::build(config, None, collective)
    }

    /// [`Trainer::resume`] as one process of a data-parallel run (see
    /// [`Trainer::new_distributed`]). Inside an epoch, the world size must be the one the run
    /// was stopped with.
    pub fn resume_distributed(
        config: TrainConfig,
        checkpoint: Checkpoint,
        collective: std::rc::Rc<dyn Collective>,
    ) -> Result<Trainer> {
        Trainer::build(config, Some(checkpoint), collective)
    }

    /// Continues the run saved in `checkpoint`. `config` must define the same run (start from
    /// `checkpoint.config` and change only what [`TrainConfig`] does not save, such as `epochs`
    /// and `out`); the weights, the optimizer, the schedule and the position inside an
    /// unfinished epoch come back bit for bit, so the resumed run ends with exactly the
    /// weights of an uninterrupted one.
    pub fn resume(config: TrainConfig, checkpoint: Checkpoint) -> Result<Trainer> {
        Trainer::build(config, Some(checkpoint), std::rc::Rc::new(SingleProcess))
    }

    /// A trainer over a model and optimizer built by the caller, without data: [`Trainer::step`]
    /// works (as the benchmarks use it), [`Trainer::fit`] and [`Trainer::evaluate`] do not.
    /// The schedule is constant; the other settings are `config`'s.
    pub fn from_parts(model: ResNet, mut optimizer: Optimizer, config: TrainConfig) -> Result<Trainer> {
        config.validate()?;
        let scheduler = Scheduler::new(LrSchedule::Constant, &mut optimizer)?;
        let params = model.trainable_parameters();
        let buckets = GradientBuckets::new(&params, config.bucket_cap_mb);
        Ok(Trainer {
            state: RunState::fresh(config.epochs),
            config,
            model,
            optimizer,
            scheduler,
            per_step_schedule: false,
            buckets,
            params,
            data: None,
            callbacks: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            pending: 0,
            window_buffers: Vec::new(),
            reinitialised_head: None,
            collective: std::rc::Rc::new(SingleProcess),
        })
    }

    /// This trainer as one process of a data-parallel group (for [`Trainer::from_parts`]; the
    /// data-owning constructors take the group directly): rank 0's weights and buffers are
    /// broadcast now, and every update then averages the gradients over the group.
    pub fn with_collective(mut self, collective: std::rc::Rc<dyn Collective>) -> Result<Trainer> {
        crate::dist::broadcast_parameters(collective.as_ref(), &self.model)?;
        self.state.world_size = collective.world_size();
        self.collective = collective;
        Ok(self)
    }

    fn build(
        config: TrainConfig,
        checkpoint: Option<Checkpoint>,
        collective: std::rc::Rc<dyn Collective>,
    ) -> Result<Trainer> {
        config.validate()?;
        let (rank, world_size) = (collective.rank(), collective.world_size());
        let out = config.out.clone();
        if checkpoint.is_none() && Checkpoint::exists_in(&out) {
            return Err(TrainError::HoldsRun { out });
        }
        if let Some(ck) = &checkpoint {
            if ck.state.progress.is_some() && ck.state.world_size != world_size {
                return Err(TrainError::Checkpoint {
                    path: ck.path.clone(),
                    msg: format!(
                        "the run was stopped inside an epoch with {} process(es); resume it with as many (this is {world_size})",
                        ck.state.world_size
                    ),
                });
            }
        }
        if rank == 0 {
            std::fs::create_dir_all(&out).map_err(|source| TrainError::Unwritable {
                out: out.clone(),
                source: Box::new(tensor::TensorError::Io { path: out.clone(), source }.into()),
            })?;
            remove_stale_temporaries(&out);
        }
        let Datasets { train, val, classes, demo } = datasets::open(&config)?;
        let mut model_config = config.arch.config(classes.len());
        model_config.base_planes = config.base_planes;
        let mut model = model_config.build(Init::Torchvision(config.seed))?;
        let mut reinitialised_head = None;
        if let (Some(path), None) = (&config.weights, &checkpoint) {
            let sd = resnet::read_weights(path)?;
            let report = resnet::load_pretrained(&model, &sd).map_err(|source| TrainError::WeightsDoNotFit {
                path: path.clone(),
                arch: config.arch.name().into(),
                source: Box::new(source),
            })?;
            if !report.mismatched.is_empty() || !report.missing.is_empty() {
                model.reset_head(classes.len(), config.seed)?;
                reinitialised_head = Some((sd.num_classes().unwrap_or(0), classes.len()));
            }
        }
        if config.freeze_backbone {
            model.freeze_backbone();
        }
        // The model lives on the device from here on: the optimizer's state is created there,
        // and a resumed checkpoint's tensors are loaded where their parameters are.
        model.to_device(config.device)?;
        let (image_size, resize) = (config.image_size, config.eval_resize());
        let eval_meta: Vec<(&str, String)> = vec![
            (meta::CLASSES, serde_json::to_string(&classes).expect("strings serialise")),
            (meta::RESIZE, resize.to_string()),
            (meta::CROP, image_size.to_string()),
            (meta::MEAN, serde_json::to_string(&presets::IMAGENET_MEAN).expect("floats serialise")),
            (meta::STD, serde_json::to_string(&presets::IMAGENET_STD).expect("floats serialise")),
        ];
        let metadata = resnet::weights::metadata_for(config.arch, &model.config, &eval_meta);
        if rank == 0 {
            data::write_class_indices(out.join("class_indices.json"), &classes)
                .map_err(|e| TrainError::Unwritable { out: out.clone(), source: Box::new(e.into()) })?;
        }

        let loader_config = |shuffle: bool| {
            LoaderConfig::new(config.batch_size)
                .shuffle(shuffle)
                .num_workers(config.workers)
                .seed(config.seed)
                .skip_bad_images(config.skip_bad_images)
                // Training shards are padded to equal length (every process takes as many
                // steps); validation shards are not, so every image counts once.
                .shard((world_size > 1).then_some(data::Shard { rank, world_size, pad: shuffle }))
        };
        let scale = config.crop_scale.unwrap_or_else(|| demo::legacy_crop_scale(demo));
        let train = Loader::new(train, presets::train(image_size, scale)?, loader_config(true))?;
        let val = Loader::new(val, presets::imagenet_eval(resize, image_size)?, loader_config(false))?;
        let updates_per_epoch = train.len().max(1).div_ceil(config.accumulate);
        crate::dist::broadcast_parameters(collective.as_ref(), &model)?;
        if config.sync_bn && world_size > 1 {
            crate::dist::sync_batch_norm(Some(collective.clone()));
        }
        let params = model.trainable_parameters();
        let mut optimizer = Optimizer::new(method(&config), params.clone(), config.lr, config.weight_decay)?;
        let (schedule, per_step_schedule) = schedule(&config, updates_per_epoch);
        let mut scheduler = Scheduler::new(schedule, &mut optimizer)?;
        let mut state = RunState::fresh(config.epochs);
        state.world_size = world_size;
        if let Some(ck) = checkpoint {
            model.load_state_dict(&ck.model, true).map_err(|e| TrainError::Checkpoint {
                path: ck.path.clone(),
                msg: format!("the checkpoint's weights do not fit {}: {e}", config.arch),
            })?;
            optimizer.load_state_dict(&ck.optimizer)?;
            state = ck.state;
            state.epochs = config.epochs;
            state.world_size = world_size;
            if let (Some(p), true) = (&mut state.progress, rank != 0) {
                // The saved sums are every process's; rank 0 carries them on.
                *p = Progress { next_batch: p.next_batch, lr: p.lr, seconds: p.seconds, ..Progress::new(p.lr) };
            }
            scheduler.set_steps(state.scheduler_steps, &mut optimizer);
        }
        let buckets = GradientBuckets::new(&params, config.bucket_cap_mb);
        Ok(Trainer {
            config,
            model,
            optimizer,
            scheduler,
            per_step_schedule,
            buckets,
            params,
            data: Some(RunData { train, val, classes, demo, metadata }),
            state,
            callbacks: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            pending: 0,
            window_buffers: Vec::new(),
            reinitialised_head,
            collective,
        })
    }

    /// Adds a callback; each event goes to the callbacks in the order they were added.
    pub fn add_callback(&mut self, callback: impl Callback + 'static) {
        self.callbacks.push(Box::new(callback));
    }

    /// The flag that stops the run at the next batch (a Ctrl-C handler sets it): the position
    /// inside the epoch is checkpointed and [`Trainer::fit`] returns
    /// [`FitOutcome::Interrupted`].
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The model being trained.
    pub fn model(&self) -> &ResNet {
        &self.model
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Where the run stands.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The class names, by index (empty for [`Trainer::from_parts`]).
    pub fn classes(&self) -> &[String] {
        self.data.as_ref().map_or(&[], |d| &d.classes)
    }

    /// Whether the data are the built-in demo dataset.
    pub fn is_demo(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.demo)
    }

    /// The training and validation loaders.
    pub fn loaders(&self) -> Option<(&Loader, &Loader)> {
        self.data.as_ref().map(|d| (&d.train, &d.val))
    }

    /// When pretrained weights had a head of another class count: (theirs, the data's). The
    /// head was re-initialised.
    pub fn reinitialised_head(&self) -> Option<(usize, usize)> {
        self.reinitialised_head
    }

    /// The run's checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.config.out.join(keys::FILE)
    }

    fn emit(&mut self, event: Event<'_>) {
        for c in &mut self.callbacks {
            c.on_event(&event);
        }
    }

    /// One training step on a batch: train-mode forward, cross-entropy, backward, and the
    /// optimizer's update (every `accumulate` batches; until then the gradients add up, each
    /// batch's loss divided by `accumulate`). A non-finite loss or gradient makes no update and
    /// discards the accumulated gradients; what to do about it is the caller's choice
    /// ([`Trainer::fit`] follows `on_nonfinite`).
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<StepOutcome> {
        self.step_with(images, labels, false)
    }

    fn step_with(&mut self, images: &Tensor, labels: &Tensor, inject_nan: bool) -> Result<StepOutcome> {
        if self.pending == 0 {
            self.optimizer.zero_grad();
            if self.config.accumulate > 1 {
                self.window_buffers =
                    self.model.named_buffers().into_iter().map(|(_, b)| (b.clone(), b.value())).collect();
            }
        }
        // DDP's broadcast_buffers: every process runs with rank 0's batch-norm statistics.
        crate::dist::broadcast_buffers(self.collective.as_ref(), &self.model)?;
        let images_n = labels.numel();
        // One process: the pool's workers stay awake through the forward and backward passes'
        // hundreds of short parallel loops (train-resnet18-b16 669-678 -> 642-643 ms per step,
        // 2 threads). With several, the passes stay on this thread (a synchronised batch norm
        // all-reduces inside the forward pass, and the other processes need the cores).
        let one_process = self.collective.world_size() == 1;
        let model = &self.model;
        let forward = || -> Result<(Var, Var)> {
            let logits = model.forward(&Var::constant(images.to_device(model.device())?))?;
            let loss = CrossEntropyLoss::default().forward(&logits, labels)?;
            Ok((logits, loss))
        };
        let (logits, loss) = if one_process { tensor::with_workers_awake(forward) } else { forward() }?;
        let mut value = loss.value().item()? as f64;
        if inject_nan {
            value = f64::NAN;
        }
        // One decision for every process, before the backward pass all-reduces: a loss that
        // failed anywhere skips the batch everywhere.
        let mut fault = self.agree_on_fault((!value.is_finite()).then(|| format!("the loss became {value}")))?;
        // The optimizer steps after this batch: its backward pass all-reduces the gradients
        // (the batches before it in an accumulation window are DDP's `no_sync`).
        let synchronised = fault.is_none() && self.pending + 1 == self.config.accumulate;
        if fault.is_none() {
            let scaled =
                if self.config.accumulate > 1 { loss.mul_scalar(1.0 / self.config.accumulate as f32)? } else { loss };
            if one_process {
                tensor::with_workers_awake(|| scaled.backward())?;
            } else if synchronised {
                self.buckets.backward(self.collective.as_ref(), &scaled)?;
            } else {
                scaled.backward()?;
            }
            let local = (!gradients_finite(&self.params)?).then(|| "a gradient became non-finite".to_string());
            fault = self.agree_on_fault(local)?;
        }
        if let Some(why) = fault {
            // The window ends without an update; the next step starts from zeroed gradients.
            self.pending = 0;
            if self.per_step_schedule {
                self.scheduler.step(&mut self.optimizer);
            }
            return Ok(StepOutcome::NonFinite { why });
        }
        let correct = (nn::accuracy(&logits.value(), labels)? * images_n as f64).round() as usize;
        self.pending += 1;
        let optimizer_stepped = self.pending == self.config.accumulate;
        if optimizer_stepped {
            self.apply_update(synchronised)?;
        }
        Ok(StepOutcome::Updated { loss: value, correct, images: images_n, optimizer_stepped })
    }

    /// `local` (this process's fault, if any) made every process's: with several processes, a
    /// fault in any of them is a fault in all.
    fn agree_on_fault(&self, local: Option<String>) -> Result<Option<String>> {
        if self.collective.world_size() == 1 {
            return Ok(local);
        }
        let mut faults = [f64::from(u8::from(local.is_some()))];
        self.collective.all_reduce_sum_f64(&mut faults)?;
        Ok(match local {
            None if faults[0] > 0.0 => Some("the loss or a gradient became non-finite in another process".to_string()),
            local => local,
        })
    }

    /// The optimizer's step on the accumulated gradients (and the schedule's, when it steps
    /// with the optimizer). `synchronised`: the last backward pass already averaged them over
    /// the processes.
    fn apply_update(&mut self, synchronised: bool) -> Result<()> {
        if !synchronised {
            // DDP's all-reduce: every process steps on the mean of their accumulated gradients.
            self.buckets.average(self.collective.as_ref())?;
        }
        self.optimizer.step()?;
        self.pending = 0;
        if self.per_step_schedule {
            self.scheduler.step(&mut self.optimizer);
        }
        Ok(())
    }

    /// Loss, top-1 and top-5 accuracy on the validation set, in eval mode without recording;
    /// the model is back in training mode afterwards. `None` when the stop flag ended it.
    pub fn evaluate(&mut self) -> Result<Option<EvalMetrics>> {
        self.with_data("evaluate", |t, d| t.evaluate_on(d))
    }

    /// Runs `f` with the run's data, which [`Trainer::from_parts`] has not.
    fn with_data<T>(&mut self, what: &str, f: impl FnOnce(&mut Trainer, &RunData) -> Result<T>) -> Result<T> {
        let data =
            self.data.take().ok_or_else(|| config_err(format!("{what} needs data: build the Trainer with new")))?;
        let result = f(self, &data);
        self.data = Some(data);
        result
    }

    fn evaluate_on(&mut self, d: &RunData) -> Result<Option<EvalMetrics>> {
        Ok(self.evaluate_in_eval_mode(d, None)?.map(|(metrics, _)| metrics))
    }

    /// The validation pass in eval mode (the model is back in training mode afterwards).
    fn evaluate_in_eval_mode(
        &mut self,
        d: &RunData,
        confusion: Option<&mut Vec<Vec<usize>>>,
    ) -> Result<Option<(EvalMetrics, usize)>> {
        self.model.eval();
        let result = self.evaluate_with_confusion(d, confusion);
        self.model.train();
        result
    }

    /// The validation pass; with `confusion`, it also counts `confusion[true][predicted]`.
    fn evaluate_with_confusion(
        &mut self,
        d: &RunData,
        mut confusion: Option<&mut Vec<Vec<usize>>>,
    ) -> Result<Option<(EvalMetrics, usize)>> {
        let world_size = self.collective.world_size();
        // The model evaluated (and saved by rank 0) is rank 0's, batch-norm statistics included,
        // as a forward through DDP would broadcast them.
        crate::dist::broadcast_buffers(self.collective.as_ref(), &self.model)?;
        // Processes may hold one validation batch more or less than others, so a stop cannot be
        // agreed on per batch: a distributed pass runs to its end.
        let stop = if world_size > 1 { Arc::new(AtomicBool::new(false)) } else { self.stop.clone() };
        let mut failed = None;
        let result = evaluate_loader(&self.model, &d.val, d.classes.len(), &stop, confusion.as_deref_mut(), &mut |e| {
            failed = Some(e);
        });
        if let Some(e) = failed {
            return Err(self.data_failure(e, d));
        }
        let Some((m, top5)) = result? else { return Ok(None) };
        if world_size == 1 {
            return Ok(Some((m, top5)));
        }
        // The figures of the whole validation set: every process's sums, summed.
        let mut sums =
            vec![m.loss * m.images as f64, m.acc * m.images as f64, top5 as f64, m.images as f64, m.skipped as f64];
        if let Some(c) = confusion.as_deref() {
            sums.extend(c.iter().flatten().map(|&v| v as f64));
        }
        self.collective.all_reduce_sum_f64(&mut sums)?;
        if let Some(c) = confusion {
            for (cell, v) in c.iter_mut().flatten().zip(&sums[5..]) {
                *cell = v.round() as usize;
            }
        }
        let images = sums[3].round() as usize;
        let per = |x: f64| x / images.max(1) as f64;
        let metrics = EvalMetrics {
            loss: per(sums[0]),
            acc: per(sums[1]),
            top5: per(sums[2]),
            images,
            skipped: sums[4].round() as usize,
        };
        Ok(Some((metrics, sums[2].round() as usize)))
    }

    /// The per-class report of the current model on the validation set: precision, recall, F1,
    /// support, the confusion matrix, top-1 and top-5 (scikit-learn's `classification_report`
    /// and `confusion_matrix`). `None` when the stop flag ended it.
    pub fn class_report(&mut self) -> Result<Option<ClassReport>> {
        self.with_data("class_report", |t, d| {
            let n = d.classes.len();
            let mut confusion = vec![vec![0usize; n]; n];
            let result = t.evaluate_in_eval_mode(d, Some(&mut confusion))?;
            Ok(result.map(|(_, top5)| ClassReport::new(&d.classes, confusion, top5)))
        })
    }

    /// Loads `best.safetensors` (the weights of the best validation accuracy) into the model,
    /// as Lightning's `trainer.test(ckpt_path="best")` does before a final evaluation.
    pub fn restore_best(&mut self) -> Result<()> {
        if self.collective.rank() == 0 {
            let path = self.config.out.join("best.safetensors");
            let file = tensor::read_safetensors(&path)?;
            self.model.load_state_dict(&file.entries, true).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                msg: format!("the best weights do not fit the model: {e}"),
            })?;
        }
        // Only rank 0 writes the run folder, which may be on its machine alone.
        crate::dist::broadcast_parameters(self.collective.as_ref(), &self.model)
    }

    /// This process's rank in a data-parallel run (0 without one).
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// The collective operations of the run's processes.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Trains the planned epochs from where the run stands: per epoch the training pass, the
    /// validation pass, `best.safetensors` when the validation accuracy improved, the checkpoint
    /// and the reports. Ends early with [`FitOutcome::EarlyStopped`] or
    /// [`FitOutcome::Interrupted`]; an error names the epoch and batch, and the last checkpoint
    /// stays as it was.
    pub fn fit(&mut self) -> Result<FitOutcome> {
        self.with_data("fit", |t, d| t.fit_on(d))
    }

    fn fit_on(&mut self, d: &RunData) -> Result<FitOutcome> {
        let epochs = self.state.epochs;
        if self.state.epoch > 0 && self.state.progress.is_none() && !self.reports_current() {
            // A kill came between the checkpoint and the reports it names.
            self.write_reports(d)?;
        }
        if self.state.epoch >= epochs {
            return Ok(FitOutcome::AlreadyDone { epochs: self.state.epoch });
        }
        if let Some(es) = self.config.early_stopping {
            if self.state.stale_epochs >= es.patience {
                return Ok(FitOutcome::EarlyStopped { epoch: self.state.epoch });
            }
        }
        let batches = d.train.len().max(1);
        self.emit(Event::FitStarted {
            first_epoch: self.state.epoch + 1,
            epochs,
            batches,
            train_images: d.train.num_samples(),
            val_images: d.val.num_samples(),
            classes: &d.classes,
        });
        let (save_every, eval_every) = (self.config.save_every, self.config.eval_every);
        for epoch in self.state.epoch + 1..=epochs {
            self.model.train();
            let mut p = self.state.progress.take().unwrap_or_else(|| Progress::new(self.optimizer.lr()));
            // Where the current accumulation window began: what a stop inside it saves.
            let mut window_start = p;
            let started = Instant::now();
            let seconds_before = p.seconds;
            self.emit(Event::EpochStarted { epoch, epochs, batches, first_batch: p.next_batch });
            let mut interrupted = false;
            let mut save_due = false;
            for batch in d.train.iter_epoch_from(epoch as u64, p.next_batch) {
                if self.stop_requested()? {
                    interrupted = true;
                    break;
                }
                let batch = batch.map_err(|e| self.data_failure(e, d))?;
                // The loader already reported each one; the epoch's event counts them.
                p.skipped_images += batch.skipped.len();
                let position = batch.position + 1;
                let inject = self.config.inject_nonfinite.contains(&(epoch, position));
                let outcome = self.step_with(&batch.images, &batch.labels, inject)?;
                match &outcome {
                    StepOutcome::NonFinite { why } => match self.config.on_nonfinite {
                        OnNonFinite::Stop => {
                            let kept = self.checkpoint_path();
                            return Err(TrainError::NonFinite {
                                what: why.clone(),
                                epoch,
                                batch: position,
                                kept: kept.exists().then_some(kept),
                            });
                        }
                        OnNonFinite::Skip => p.skipped_batches += 1,
                    },
                    StepOutcome::Updated { loss, correct, images, .. } => {
                        p.loss_sum += loss * *images as f64;
                        p.correct += correct;
                        p.seen += images;
                    }
                }
                p.next_batch = position;
                if self.pending == 0 {
                    window_start = p;
                }
                let images_per_s = p.seen as f64 / (seconds_before + started.elapsed().as_secs_f64()).max(1e-9);
                self.emit(Event::BatchEnd {
                    epoch,
                    batch: position,
                    batches,
                    outcome: &outcome,
                    progress: &p,
                    images_per_s,
                });
                save_due |= save_every > 0 && p.next_batch.is_multiple_of(save_every);
                if save_due && self.pending == 0 && p.next_batch < batches {
                    self.state.scheduler_steps = self.scheduler.steps();
                    let saved = Progress { seconds: seconds_before + started.elapsed().as_secs_f64(), ..p };
                    self.state.progress = Some(self.global_progress(saved)?);
                    self.save_checkpoint(d)?;
                    self.state.progress = None;
                    save_due = false;
                    let path = self.checkpoint_path();
                    self.emit(Event::CheckpointWritten { path: &path, epoch, next_batch: Some(p.next_batch) });
                }
                if eval_every > 0 && p.next_batch.is_multiple_of(eval_every) && p.next_batch < batches {
                    let Some(metrics) = self.evaluate_on(d)? else {
                        interrupted = true;
                        break;
                    };
                    self.emit(Event::Evaluated { epoch, batch: p.next_batch, metrics: &metrics });
                }
            }
            if interrupted {
                // Gradients accumulated since the window began are dropped and the batch-norm
                // statistics go back to the window's start: the resumed run trains those
                // batches again, from the same state, in the same order.
                if self.pending > 0 {
                    for (buffer, value) in &self.window_buffers {
                        buffer.set_value(value.clone());
                    }
                }
                self.pending = 0;
                let saved = Progress { seconds: seconds_before + started.elapsed().as_secs_f64(), ..window_start };
                let saved = self.global_progress(saved)?;
                return self.interrupt(d, epoch, saved);
            }
            if self.pending > 0 {
                // The epoch's last, partial window.
                self.apply_update(false)?;
            }
            p.seconds = seconds_before + started.elapsed().as_secs_f64();
            let p = self.global_progress(p)?;
            let Some(val) = self.evaluate_on(d)? else {
                return self.interrupt(d, epoch, p);
            };
            if !self.per_step_schedule {
                self.scheduler.step(&mut self.optimizer);
            }
            let row = EpochRow {
                epoch,
                train_loss: p.mean_loss(),
                train_acc: p.accuracy(),
                val_loss: val.loss,
                val_acc: val.acc,
                lr: p.lr,
                seconds: seconds_before + started.elapsed().as_secs_f64(),
                images_per_s: p.seen as f64 / p.seconds.max(1e-9),
                val_top5: val.top5,
            };
            self.state.rows.push(row);
            self.state.epoch = epoch;
            self.state.scheduler_steps = self.scheduler.steps();
            let improved = val.acc > self.state.best_acc;
            if improved {
                self.state.best_acc = val.acc;
                self.state.best_epoch = epoch;
            }
            let early_stop = self.track_early_stopping(&val);
            self.save_epoch(d, improved)?;
            let path = self.checkpoint_path();
            self.emit(Event::CheckpointWritten { path: &path, epoch, next_batch: None });
            self.emit(Event::EpochEnd {
                row: &row,
                improved,
                skipped_train_images: p.skipped_images,
                skipped_val_images: val.skipped,
                skipped_batches: p.skipped_batches,
            });
            if let Some(best) = early_stop {
                let stale_epochs = self.state.stale_epochs;
                self.emit(Event::EarlyStopped { epoch, best, stale_epochs });
                return Ok(FitOutcome::EarlyStopped { epoch });
            }
        }
        Ok(FitOutcome::Completed)
    }

    /// Whether the stop flag is set — in any process of a distributed run, so that all stop at
    /// the same batch.
    fn stop_requested(&self) -> Result<bool> {
        let local = self.stop.load(Ordering::Relaxed);
        if self.collective.world_size() == 1 {
            return Ok(local);
        }
        let mut any = [f64::from(u8::from(local))];
        self.collective.all_reduce_sum_f64(&mut any)?;
        Ok(any[0] > 0.0)
    }

    /// The epoch's sums over every process (the skipped-batch count is already common).
    fn global_progress(&self, p: Progress) -> Result<Progress> {
        if self.collective.world_size() == 1 {
            return Ok(p);
        }
        let mut sums = [p.loss_sum, p.correct as f64, p.seen as f64, p.skipped_images as f64];
        self.collective.all_reduce_sum_f64(&mut sums)?;
        Ok(Progress {
            loss_sum: sums[0],
            correct: sums[1].round() as usize,
            seen: sums[2].round() as usize,
            skipped_images: sums[3].round() as usize,
            ..p
        })
    }

    /// Saves the position inside `epoch` and reports the stop.
    fn interrupt(&mut self, d: &RunData, epoch: usize, progress: Progress) -> Result<FitOutcome> {
        self.state.scheduler_steps = self.scheduler.steps();
        self.state.progress = Some(progress);
        self.save_checkpoint(d)?;
        let path = self.checkpoint_path();
        self.emit(Event::Interrupted { epoch, next_batch: progress.next_batch, checkpoint: &path });
        Ok(FitOutcome::Interrupted { epoch, next_batch: progress.next_batch })
    }

    /// Updates early stopping's bookkeeping after an epoch; `Some(best)` when the run should
    /// stop.
    fn track_early_stopping(&mut self, val: &EvalMetrics) -> Option<f64> {
        let es = self.config.early_stopping?;
        let value = match es.monitor {
            Monitor::ValLoss => val.loss,
            Monitor::ValAcc => val.acc,
            Monitor::ValTop5 => val.top5,
        };
        let better = match self.state.monitored_best {
            None => value.is_finite(),
            Some(best) if es.monitor.higher_is_better() => value > best + es.min_delta,
            Some(best) => value < best - es.min_delta,
        };
        if better {
            self.state.monitored_best = Some(value);
            self.state.stale_epochs = 0;
        } else {
            self.state.stale_epochs += 1;
        }
        (self.state.stale_epochs >= es.patience).then(|| self.state.monitored_best.unwrap_or(f64::NAN))
    }

    /// A data error during training. A bad image without `skip_bad_images` stops the run;
    /// before it does, every image of both sets is tried so that the error names each bad file.
    fn data_failure(&mut self, e: DataError, d: &RunData) -> TrainError {
        if !e.is_bad_image() {
            return e.into();
        }
        self.emit(Event::SearchingBadImages { first: &e });
        let mut bad = Vec::new();
        for loader in [&d.train, &d.val] {
            match data::find_bad_images(loader.dataset(), self.config.workers.max(1)) {
                Ok(found) => bad.extend(found.into_iter().map(|(_, e)| e)),
                Err(other) => return other.into(),
            }
        }
        if bad.is_empty() {
            // It could be read on the second try (a file being written, say): name the first.
            bad.push(e);
        }
        TrainError::BadImages { errors: bad }
    }

    /// Writes `checkpoint.safetensors`: the one file a resume reads (rank 0 only).
    fn save_checkpoint(&self, d: &RunData) -> Result<()> {
        if self.collective.rank() != 0 {
            return Ok(());
        }
        let mut entries: Vec<(String, Tensor)> =
            self.model.state_dict().into_iter().map(|(k, t)| (format!("{}{k}", keys::MODEL), t)).collect();
        entries.extend(self.optimizer.state_dict().into_iter().map(|(k, t)| (format!("{}{k}", keys::OPTIMIZER), t)));
        let mut metadata = d.metadata.clone();
        metadata.insert(keys::SETTINGS.into(), serde_json::to_string(&self.config).expect("settings serialise"));
        metadata.insert(keys::STATE.into(), serde_json::to_string(&self.state).expect("state serialises"));
        self.write_tensors(keys::FILE, &entries, &metadata)
    }

    /// The end-of-epoch writes: the best weights when they improved, then the checkpoint, then
    /// the reports. A failure names the file; every file keeps its previous version.
    fn save_epoch(&self, d: &RunData, improved: bool) -> Result<()> {
        if self.collective.rank() != 0 {
            return Ok(());
        }
        if improved {
            self.write_tensors("best.safetensors", &self.model.state_dict(), &d.metadata)?;
        }
        self.save_checkpoint(d)?;
        self.write_reports(d)
    }

    /// The files rewritten from the checkpoint's state: the last weights and the reports.
    fn write_reports(&self, d: &RunData) -> Result<()> {
        if self.collective.rank() != 0 {
            return Ok(());
        }
        self.write_tensors("last.safetensors", &self.model.state_dict(), &d.metadata)?;
        self.write_report("metrics.csv", metrics_csv(&self.state.rows).into_bytes())?;
        let points: Vec<EpochPoint> = self
            .state
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
        let png = curves_png(&points).map_err(|e| config_err(format!("drawing curves.png: {e}")))?;
        self.write_report("curves.png", png)?;
        // Last: it names the state the files above belong to.
        self.write_report("run.json", self.summary().into_bytes())
    }

    /// `run.json`: the settings and state, for people.
    fn summary(&self) -> String {
        let summary =
            serde_json::json!({ "arch": self.config.arch.name(), "settings": self.config, "state": self.state });
        serde_json::to_string_pretty(&summary).expect("serialises")
    }

    /// Whether the reports belong to the checkpoint's state (`run.json`, written after the
    /// others, matches it).
    fn reports_current(&self) -> bool {
        std::fs::read_to_string(self.config.out.join("run.json")).is_ok_and(|s| s == self.summary())
    }

    fn write_tensors(
        &self,
        name: &str,
        entries: &[(String, Tensor)],
        metadata: &HashMap<String, String>,
    ) -> Result<()> {
        tensor::write_safetensors(self.config.out.join(name), entries, metadata).map_err(|e| self.save_failed(name, e))
    }

    fn write_report(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        tensor::write_atomic(&self.config.out.join(name), &bytes).map_err(|e| self.save_failed(name, e))
    }

    fn save_failed(&self, name: &str, e: tensor::TensorError) -> TrainError {
        TrainError::Save { path: self.config.out.join(name), out: self.config.out.clone(), source: Box::new(e.into()) }
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        if self.config.sync_bn && self.collective.world_size() > 1 {
            // The thread's batch norms go back to per-process statistics with the run.
            crate::dist::sync_batch_norm(None);
        }
    }
}

fn method(c: &TrainConfig) -> Method {
    match c.optimizer {
        OptimizerKind::Adam => Method::adam(),
        OptimizerKind::AdamW => Method::adamw(),
        OptimizerKind::Sgd => Method::sgd(c.momentum),
    }
}

/// The schedule over `updates_per_epoch` optimizer steps per epoch, and whether it steps with
/// the optimizer (one-cycle) rather than per epoch.
fn schedule(c: &TrainConfig, updates_per_epoch: usize) -> (LrSchedule, bool) {
    let epochs = c.epochs;
    match c.scheduler {
        SchedulerKind::Constant => (LrSchedule::Constant, false),
        SchedulerKind::Step => (LrSchedule::Step { step_size: (epochs / 3).max(1), gamma: 0.1 }, false),
        SchedulerKind::Cosine => (LrSchedule::Cosine { t_max: epochs.max(1), eta_min: 0.0 }, false),
        SchedulerKind::OneCycle => (LrSchedule::one_cycle(c.lr, (epochs * updates_per_epoch).max(2)), true),
    }
}

/// Loss, top-1 and top-5 (and with `confusion`, `confusion[true][predicted]`) of `model` over
/// `loader` without recording; `None` when `stop` ended it. A data error is handed to
/// `on_data_error` and ends the pass with `Ok(None)`. Returns the top-5 hits too.
fn evaluate_loader(
    model: &ResNet,
    loader: &Loader,
    classes: usize,
    stop: &AtomicBool,
    mut confusion: Option<&mut Vec<Vec<usize>>>,
    on_data_error: &mut dyn FnMut(DataError),
) -> Result<Option<(EvalMetrics, usize)>> {
    let _guard = nn::no_grad();
    let k = classes.min(5);
    let (mut loss_sum, mut correct, mut top5, mut seen, mut skipped) = (0f64, 0usize, 0usize, 0usize, 0usize);
    for batch in loader.iter_epoch(0) {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                on_data_error(e);
                return Ok(None);
            }
        };
        skipped += batch.skipped.len();
        let logits = model.forward(&Var::constant(batch.images.to_device(model.device())?))?;
        let loss =
            CrossEntropyLoss { reduction: nn::Reduction::Sum, label_smoothing: 0.0 }.forward(&logits, &batch.labels)?;
        loss_sum += loss.value().item()? as f64;
        // One read of the scores for top-1, top-5 and the confusion matrix (ties: the lower class
        // index first, as torch.topk and argmax).
        let best = nn::topk(&logits.value(), k)?.indices;
        let labels = batch.labels.to_vec_i64()?;
        for (row, &label) in best.iter().zip(&labels) {
            let label = label as usize;
            correct += usize::from(row[0] == label);
            top5 += usize::from(row.contains(&label));
            if let Some(m) = confusion.as_deref_mut() {
                m[label][row[0]] += 1;
            }
        }
        seen += labels.len();
    }
    let per = |x: f64| x / seen.max(1) as f64;
    let metrics =
        EvalMetrics { loss: per(loss_sum), acc: per(correct as f64), top5: per(top5 as f64), images: seen, skipped };
    Ok(Some((metrics, top5)))
}

/// The per-class report of `model` (eval mode) on an ImageFolder, through the validation
/// transform `Resize(resize)` + `CenterCrop(crop)` + ImageNet normalisation: what
/// `resnet evaluate` prints. The folder's classes must be the model's, in its order.
pub fn evaluate_folder(
    model: &ResNet,
    folder: &Path,
    (resize, crop): (usize, usize),
    batch_size: usize,
    workers: usize,
) -> Result<ClassReport> {
    let images = data::ImageFolder::new(folder)?;
    let classes = images.classes().to_vec();
    let outputs = model.fc.as_ref().map_or(0, |fc| fc.weight.shape()[0]);
    if outputs != classes.len() {
        return Err(config_err(format!(
            "{}: {} classes, but the model has {outputs} outputs",
            folder.display(),
            classes.len()
        )));
    }
    let transform = presets::imagenet_eval(resize, crop)?;
    let loader = Loader::new(Box::new(images), transform, LoaderConfig::new(batch_size.max(1)).num_workers(workers))?;
    model.eval();
    let mut confusion = vec![vec![0usize; classes.len()]; classes.len()];
    let mut failed = None;
    let stop = AtomicBool::new(false);
    let result = evaluate_loader(model, &loader, classes.len(), &stop, Some(&mut confusion), &mut |e| failed = Some(e));
    if let Some(e) = failed {
        return Err(e.into());
    }
    let (_, top5) = result?.ok_or_else(|| config_err("the evaluation was stopped"))?;
    Ok(ClassReport::new(&classes, confusion, top5))
}

/// Whether every gradient of the trainable parameters is finite.
fn gradients_finite(params: &[Var]) -> Result<bool> {
    let grads: Vec<Tensor> = params.iter().filter_map(Var::grad).collect();
    Ok(Tensor::all_finite_together(&grads.iter().collect::<Vec<_>>())?)
}

/// Removes the temporary files that a killed run may have left beside its outputs (a write is
/// a temporary file renamed over its target; a kill before the rename leaves it behind).
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = OUTPUT_FILES.iter().any(|f| name.starts_with(&format!(".{f}.")) && name.ends_with(".tmp"));
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

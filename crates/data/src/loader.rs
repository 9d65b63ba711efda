//! The multi-threaded batch loader (`torch.utils.data.DataLoader`).
//!
//! How it works: an epoch's sample order is fixed up front (a permutation drawn from
//! `(seed, epoch)` when shuffling), cut into batches. With `num_workers = 0` the calling thread
//! builds each batch when asked. Otherwise `num_workers` threads take batch numbers from a
//! shared queue and each builds whole batches (decode, transform with the sample's own
//! generator, stack), as PyTorch's worker processes do; the iterator hands batches out in batch
//! order, holding early ones in a reorder buffer. At most `prefetch_factor * num_workers` batches
//! are queued, in progress or waiting at any time, so memory stays bounded however slow the
//! consumer. Because every sample's randomness comes from `(seed, epoch, sample index)` and the
//! order is fixed before any worker starts, the batches are the same for any number of workers.
//!
//! Failures never hang: a worker that panics reports the panic as that batch's error, a worker
//! thread that dies is noticed while waiting, and dropping the iterator stops and joins the
//! workers. A corrupt or oversized image is an error naming the file; with `skip_bad_images` it
//! is left out of its batch instead, with a warning on standard error and a record in
//! [`Batch::skipped`].

use crate::error::{DataError, Result};
use crate::folder::Dataset;
use crate::image::FloatImage;
use crate::transforms::{mix, sample_rng, Sample, Transform};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tensor::{Rng, Tensor};

/// The loader's options. `LoaderConfig::new(batch_size)` gives PyTorch's other defaults (no
/// shuffle, keep the last partial batch, load in the calling thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Visit the samples in a new random order each epoch (drawn from `seed` and the epoch).
    pub shuffle: bool,
    /// Leave out the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Worker threads; 0 loads in the thread that iterates.
    pub num_workers: usize,
    /// Batches in flight per worker (PyTorch's `prefetch_factor`, default 2; > 0).
    pub prefetch_factor: usize,
    /// Seeds the shuffle and every sample's augmentation.
    pub seed: u64,
    /// Leave undecodable or oversized images out of their batch (with a warning) instead of
    /// failing the epoch.
    pub skip_bad_images: bool,
    /// Data-parallel training: this process's share of each epoch (PyTorch's
    /// `DistributedSampler`); `None`: every sample.
    pub shard: Option<Shard>,
}

/// One process's share of each epoch in data-parallel training, as PyTorch's
/// `DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle, seed)` takes it: the
/// epoch's global order (the same in every process, from `(seed, epoch)`) is, with `pad`, extended
/// by repeating it from the start to a multiple of `world_size`, and `rank` takes every
/// `world_size`-th index from position `rank`. So every process sees as many samples (training),
/// or, without `pad`, every sample is seen exactly once over all processes (evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process (0-based).
    pub rank: usize,
    /// How many processes share the data (> `rank`).
    pub world_size: usize,
    /// Pad to equal shares by repeating samples (`DistributedSampler`'s `drop_last=False`).
    pub pad: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 1,
            shuffle: false,
            drop_last: false,
            num_workers: 0,
            prefetch_factor: 2,
            seed: 0,
            skip_bad_images: false,
            shard: None,
        }
    }
}

impl LoaderConfig {
    /// Defaults with the given batch size.
    pub fn new(batch_size: usize) -> LoaderConfig {
        LoaderConfig { batch_size, ..LoaderConfig::default() }
    }

    /// Sets `shuffle`.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Sets `drop_last`.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Sets `num_workers`.
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }

    /// Sets `prefetch_factor`.
    pub fn prefetch_factor(mut self, n: usize) -> Self {
        self.prefetch_factor = n;
        self
    }

    /// Sets `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `skip_bad_images`.
    pub fn skip_bad_images(mut self, skip: bool) -> Self {
        self.skip_bad_images = skip;
        self
    }

    /// Sets `shard`.
    pub fn shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }
}

/// One batch: images `[N, C, H, W]` (`f32`), labels `[N]` (`i64`), and where each came from.
#[derive(Debug)]
pub struct Batch {
    /// The transformed images, stacked.
    pub images: Tensor,
    /// The class indices.
    pub labels: Tensor,
    /// Each image's file.
    pub paths: Vec<PathBuf>,
    /// Each image's index in the dataset.
    pub indices: Vec<usize>,
    /// The samples of this batch left out because `skip_bad_images` is set (their errors).
    pub skipped: Vec<DataError>,
    /// Where this batch stands in its epoch (`0..loader.len()`); with `skip_bad_images` a batch
    /// whose every image is bad is left out, so positions can jump.
    pub position: usize,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch holds no image (never true for a batch the loader yields).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Batches of transformed images from a dataset, epoch by epoch.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    config: LoaderConfig,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.dataset.len())
            .field("transform", &self.transform)
            .field("config", &self.config)
            .finish()
    }
}

impl Loader {
    /// A loader over `dataset`, applying `transform` (which must end with `ToTensor`, and produce
    /// one size for every image) to each sample.
    pub fn new(
        dataset: impl Dataset + 'static,
        transform: impl Transform + 'static,
        config: LoaderConfig,
    ) -> Result<Loader> {
        if config.batch_size == 0 {
            return Err(DataError::invalid("LoaderConfig", "batch_size must be positive"));
        }
        if config.prefetch_factor == 0 {
            return Err(DataError::invalid("LoaderConfig", "prefetch_factor must be positive"));
        }
        if let Some(s) = config.shard {
            if s.rank >= s.world_size {
                return Err(DataError::invalid(
                    "LoaderConfig",
                    format!("shard rank {} is not below the world size {}", s.rank, s.world_size),
                ));
            }
        }
        Ok(Loader { dataset: Arc::new(dataset), transform: Arc::new(transform), config })
    }

    /// The options.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The dataset.
    pub fn dataset(&self) -> &dyn Dataset {
        &*self.dataset
    }

    /// Batches per epoch (`len(loader)`): `ceil(n / batch_size)`, or `floor` with `drop_last`.
    /// With `skip_bad_images`, a batch whose every image is bad is left out, so an epoch can
    /// yield fewer.
    pub fn len(&self) -> usize {
        let (n, b) = (self.samples_per_epoch(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Whether an epoch yields no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples in the dataset.
    pub fn num_samples(&self) -> usize {
        self.dataset.len()
    }

    /// Samples this loader visits per epoch: the dataset's, or this process's share of them.
    pub fn samples_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        match self.config.shard {
            None => n,
            Some(Shard { world_size, pad: true, .. }) => n.div_ceil(world_size),
            Some(Shard { rank, world_size, pad: false }) => n.saturating_sub(rank).div_ceil(world_size),
        }
    }

    /// The order in which `epoch` visits the samples: `0..n`, or a permutation drawn from
    /// `(seed, epoch)` when shuffling; with a [`Shard`], this process's share of that order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let order = if self.config.shuffle {
            Rng::seed(mix(&[self.config.seed, epoch, 0x5348_5546])).permutation(n)
        } else {
            (0..n).collect()
        };
        let Some(Shard { rank, world_size, pad }) = self.config.shard else { return order };
        let total = if pad { n.div_ceil(world_size) * world_size } else { n };
        // DistributedSampler's padding: the order repeated from its start, as often as needed.
        order.iter().copied().cycle().take(if n == 0 { 0 } else { total }).skip(rank).step_by(world_size).collect()
    }

    /// The dataset indices of each batch of `epoch`.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = self.epoch_order(epoch);
        let mut batches: Vec<Vec<usize>> = order.chunks(self.config.batch_size).map(<[usize]>::to_vec).collect();
        if self.config.drop_last && batches.last().is_some_and(|b| b.len() < self.config.batch_size) {
            batches.pop();
        }
        batches
    }

    /// Iterates over the batches of `epoch` (epochs are numbered by the caller, from 0).
    pub fn iter_epoch(&self, epoch: u64) -> EpochIter {
        self.iter_epoch_from(epoch, 0)
    }

    /// Iterates over the batches of `epoch` from position `first` on, the earlier ones neither
    /// loaded nor decoded: what resuming an interrupted epoch needs. The batches are the same
    /// as the tail of [`Loader::iter_epoch`]'s, since every sample's randomness depends only on
    /// `(seed, epoch, sample)`.
    pub fn iter_epoch_from(&self, epoch: u64, first: usize) -> EpochIter {
        let ctx = Arc::new(Ctx {
            dataset: Arc::clone(&self.dataset),
            transform: Arc::clone(&self.transform),
            seed: self.config.seed,
            epoch,
            skip_bad: self.config.skip_bad_images,
            batches: self.batch_indices(epoch),
        });
        let first = first.min(ctx.batches.len());
        let workers = self.config.num_workers.min(ctx.batches.len() - first);
        let (pool, start_error) = if workers == 0 {
            (None, None)
        } else {
            match Pool::start(&ctx, workers, workers * self.config.prefetch_factor, first) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            }
        };
        EpochIter { ctx, next: first, finished: false, pool, start_error }
    }
}

/// What every worker shares for one epoch.
struct Ctx {
    dataset: Arc<dyn Dataset>,
    transform: Arc<dyn Transform>,
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    batches: Vec<Vec<usize>>,
}

impl Ctx {
    /// Builds batch `b`; `None` when every one of its samples was skipped.
    fn make_batch(&self, b: usize) -> Result<Option<Batch>> {
        let indices = &self.batches[b];
        let mut images: Vec<FloatImage> = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        let mut paths: Vec<PathBuf> = Vec::with_capacity(indices.len());
        let mut used = Vec::with_capacity(indices.len());
        let mut skipped = Vec::new();
        for &i in indices {
            let ex = match self.dataset.get(i) {
                Ok(ex) => ex,
                Err(e) if self.skip_bad && e.is_bad_image() => {
                    eprintln!("warning: skipping sample {i}: {e}");
                    skipped.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut rng = sample_rng(self.seed, self.epoch, i as u64);
            let out = self
                .transform
                .apply(Sample::Image(ex.image), &mut rng)?
                .into_tensor("the loader's transform (end it with ToTensor)")?;
            if let Some(first) = images.first() {
                if first.shape() != out.shape() {
                    return Err(DataError::BatchShapeMismatch {
                        first: paths[0].clone(),
                        first_shape: first.shape().to_vec(),
                        other: ex.path,
                        other_shape: out.shape().to_vec(),
                    });
                }
            }
            images.push(out);
            labels.push(ex.label as i64);
            paths.push(ex.path);
            used.push(i);
        }
        let Some(first) = images.first() else { return Ok(None) };
        let [c, h, w] = first.shape();
        let n = images.len();
        let mut data = Vec::with_capacity(n * c * h * w);
        for img in &images {
            data.extend_from_slice(&img.data);
        }
        drop(images);
        Ok(Some(Batch {
            images: Tensor::from_vec(data, &[n, c, h, w])?,
            labels: Tensor::from_vec_i64(labels, &[n])?,
            paths,
            indices: used,
            skipped,
            position: b,
        }))
    }
}

type BatchResult = Result<Option<Batch>>;

/// The worker threads of one epoch and the reorder buffer.
struct Pool {
    tasks: Option<mpsc::Sender<usize>>,
    results: Option<mpsc::Receiver<(usize, BatchResult)>>,
    pending: BTreeMap<usize, BatchResult>,
    dispatched: usize,
    window: usize,
    total: usize,
    handles: Vec<JoinHandle<()>>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
}

impl Pool {
    /// Starts `workers` threads that build batches from position `first` on.
    fn start(ctx: &Arc<Ctx>, workers: usize, window: usize, first: usize) -> Result<Pool> {
        let (task_tx, task_rx) = mpsc::channel::<usize>();
        let task_rx = Arc::new(Mutex::new(task_rx));
        let (result_tx, result_rx) = mpsc::channel();
        let mut pool = Pool {
            tasks: Some(task_tx),
            results: Some(result_rx),
            pending: BTreeMap::new(),
            dispatched: first,
            window,
            total: ctx.batches.len(),
            handles: Vec::with_capacity(workers),
        };
        for w in 0..workers {
            let spawned = {
                let (ctx, task_rx, result_tx) = (Arc::clone(ctx), Arc::clone(&task_rx), result_tx.clone());
                std::thread::Builder::new().name(format!("loader-{w}")).spawn(move || loop {
                    // The lock is held only while waiting for a task number.
                    let task = task_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(b) = task else { break };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.make_batch(b)))
                        .unwrap_or_else(|p| Err(DataError::Worker { batch: b, msg: panic_message(&*p) }));
                    if result_tx.send((b, r)).is_err() {
                        break;
                    }
                })
            };
            match spawned {
                Ok(h) => pool.handles.push(h),
                // Dropping `pool` stops and joins the workers already started.
                Err(e) => {
                    return Err(DataError::Worker { batch: 0, msg: format!("cannot start worker thread {w}: {e}") })
                }
            }
        }
        pool.refill(first);
        Ok(pool)
    }

    /// Queues batches up to `window` ahead of `consumed` (the batches already handed out).
    fn refill(&mut self, consumed: usize) {
        let Some(tasks) = &self.tasks else { return };
        while self.dispatched < self.total && self.dispatched < consumed + self.window {
            if tasks.send(self.dispatched).is_err() {
                return;
            }
            self.dispatched += 1;
        }
    }

    /// Waits for batch `b`.
    fn take(&mut self, b: usize) -> BatchResult {
        loop {
            if let Some(r) = self.pending.remove(&b) {
                self.refill(b + 1);
                return r;
            }
            let Some(results) = &self.results else {
                return Err(DataError::Worker { batch: b, msg: "the loader was shut down".into() });
            };
            match results.recv_timeout(Duration::from_millis(200)) {
                Ok((i, r)) => {
                    self.pending.insert(i, r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Workers leave only when the task queue closes, which happens in `shutdown`:
                    // one that has finished now died outside `catch_unwind`.
                    if self.handles.iter().any(JoinHandle::is_finished) {
                        return Err(DataError::Worker { batch: b, msg: "a worker thread died".into() });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(DataError::Worker { batch: b, msg: "all worker threads exited".into() });
                }
            }
        }
    }

    fn shutdown(&mut self) {
        // Closing both channels makes every worker leave after at most its current batch.
        self.tasks = None;
        self.results = None;
        self.pending.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    ctx: Arc<Ctx>,
    next: usize,
    finished: bool,
    pool: Option<Pool>,
    start_error: Option<DataError>,
}

impl EpochIter {
    /// Batches not yet yielded (an upper bound with `skip_bad_images`).
    pub fn remaining(&self) -> usize {
        if self.finished {
            0
        } else {
            self.ctx.batches.len() - self.next
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(e) = self.start_error.take() {
            self.finished = true;
            return Some(Err(e));
        }
        loop {
            if self.finished || self.next >= self.ctx.batches.len() {
                self.finished = true;
                if let Some(mut p) = self.pool.take() {
                    p.shutdown();
                }
                return None;
            }
            let b = self.next;
            self.next += 1;
            let r = match &mut self.pool {
                Some(p) => p.take(b),
                None => self.ctx.make_batch(b),
            };
            match r {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => continue,
                Err(e) => {
                    // An error ends the epoch (as an exception ends PyTorch's loop).
                    self.finished = true;
                    if let Some(mut p) = self.pool.take() {
                        p.shutdown();
                    }
                    return Some(Err(e));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining()))
    }
}

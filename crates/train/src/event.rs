//! What a [`crate::Trainer`] tells its callbacks. The library prints nothing: progress bars,
//! log lines and loggers are callbacks.

use crate::{EpochRow, EvalMetrics, Progress, StepOutcome};
use std::path::Path;

/// Something that happened in a run, in the order it happened.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// [`crate::Trainer::fit`] begins (or continues a resumed run).
    FitStarted {
        /// The first epoch to train (1-based).
        first_epoch: usize,
        /// The planned epochs.
        epochs: usize,
        /// Batches per epoch.
        batches: usize,
        /// Training images.
        train_images: usize,
        /// Validation images.
        val_images: usize,
        /// The class names, by index.
        classes: &'a [String],
    },
    /// An epoch begins (at `first_batch` when a stopped epoch continues).
    EpochStarted {
        /// 1-based.
        epoch: usize,
        /// The planned epochs.
        epochs: usize,
        /// Batches in the epoch.
        batches: usize,
        /// The first batch this pass trains (0 unless resumed inside the epoch).
        first_batch: usize,
    },
    /// A training batch is done.
    BatchEnd {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch.
        batch: usize,
        /// Batches in the epoch.
        batches: usize,
        /// What the step did (a skipped non-finite batch with [`crate::OnNonFinite::Skip`]).
        outcome: &'a StepOutcome,
        /// The epoch's sums so far.
        progress: &'a Progress,
        /// Training images per second in this epoch so far.
        images_per_s: f64,
    },
    /// A validation pass inside an epoch (every `eval_every` batches).
    Evaluated {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch after which it ran.
        batch: usize,
        /// Its figures.
        metrics: &'a EvalMetrics,
    },
    /// An epoch is done, validated, and its files are written.
    EpochEnd {
        /// Its metrics row.
        row: &'a EpochRow,
        /// Whether the validation accuracy improved (`best.safetensors` was written).
        improved: bool,
        /// Training images skipped as unreadable.
        skipped_train_images: usize,
        /// Validation images skipped as unreadable.
        skipped_val_images: usize,
        /// Batches skipped as non-finite.
        skipped_batches: usize,
    },
    /// `checkpoint.safetensors` was written.
    CheckpointWritten {
        /// The file.
        path: &'a Path,
        /// 1-based epoch it belongs to.
        epoch: usize,
        /// The next batch's position when written inside an epoch; `None` at its end.
        next_batch: Option<usize>,
    },
    /// An image could not be read and `skip_bad_images` is off: before the run stops, every
    /// image of both sets is tried so that the error names each bad one (this can take a while).
    SearchingBadImages {
        /// The first error.
        first: &'a data::DataError,
    },
    /// Early stopping ended the run.
    EarlyStopped {
        /// The last epoch trained.
        epoch: usize,
        /// The best value of the watched metric.
        best: f64,
        /// Epochs without improvement.
        stale_epochs: usize,
    },
    /// The stop flag ended the run inside an epoch; the checkpoint holds the position.
    Interrupted {
        /// 1-based epoch.
        epoch: usize,
        /// The next batch's position.
        next_batch: usize,
        /// The checkpoint written.
        checkpoint: &'a Path,
    },
}

/// Receives a run's [`Event`]s: Lightning's `Callback`, as one method over one enum. Any
/// `FnMut(&Event)` closure is one.
pub trait Callback {
    /// Called for each event, in order, on the training thread.
    fn on_event(&mut self, event: &Event<'_>);
}

impl<F: FnMut(&Event<'_>)> Callback for F {
    fn on_event(&mut self, event: &Event<'_>) {
        self(event)
    }
}

//! Data-parallel training against one process, under `mpirun -np 2`: two SGD-with-momentum
//! steps of a narrow ResNet-18 on 2 x 4 images give the weights one process gets on the same 8
//! images — in eval mode (batch norm on running statistics, every image's gradient its own),
//! also as one step accumulated over both batches, and in training mode with SyncBatchNorm
//! (weights and running statistics) — and every rank ends with the same weights. The gradients
//! go in small buckets, each all-reduced during the backward pass. Run by tests/distributed.rs:
//!
//! ```text
//! mpirun --allow-run-as-root --oversubscribe -np 2 target/release/examples/ddp_check
//! ```
use nn::{Method, ModuleExt, Optimizer};
use resnet_rs::train::dist::{Collective, Mpi, SingleProcess};
use resnet_rs::train::{TrainConfig, Trainer};
use resnet_rs::{nn, resnet, tensor};
use std::rc::Rc;
use tensor::{Rng, Tensor};

fn trainer(seed: u64, collective: Rc<dyn Collective>, accumulate: usize) -> Trainer {
    let mut config = resnet::Arch::Resnet18.config(3);
    config.base_planes = 4;
    let model = config.build(resnet::Init::Torchvision(seed)).expect("model");
    model.eval();
    let opt = Optimizer::new(Method::sgd(0.9), model.trainable_parameters(), 0.1, 1e-4).expect("optimizer");
    // Buckets of 10 KiB: the gradients travel in a dozen all-reduces started during the backward.
    let config = TrainConfig { bucket_cap_mb: 0.01, accumulate, ..TrainConfig::default() };
    Trainer::from_parts(model, opt, config).and_then(|t| t.with_collective(collective)).expect("trainer")
}

fn weights(t: &Trainer) -> Vec<f32> {
    t.model().trainable_parameters().iter().flat_map(|p| p.value().to_vec_f32().expect("weights")).collect()
}

fn main() {
    let mpi: Rc<dyn Collective> = Rc::new(Mpi::init().expect("MPI"));
    let (rank, world) = (mpi.rank(), mpi.world_size());
    let mut rng = Rng::seed(5);
    let batches: Vec<(Tensor, Tensor)> = (0..2)
        .map(|_| {
            (
                Tensor::randn(&[4 * world, 3, 32, 32], &mut rng),
                Tensor::from_vec_i64((0..4 * world as i64).map(|i| i % 3).collect(), &[4 * world]).expect("labels"),
            )
        })
        .collect();
    // Each rank starts from its own seed: the broadcast makes rank 0's weights everyone's.
    // Two updates, then one update accumulated over both batches (the first backward pass
    // without all-reduce, DDP's no_sync; the second all-reduces the sum).
    for accumulate in [1, 2] {
        let mut ddp = trainer(rank as u64 + 1, mpi.clone(), accumulate);
        train_on_shard(&mut ddp, &batches, rank);
        let got = weights(&ddp);
        let mut rank0 = got.clone();
        mpi.broadcast(&mut rank0, 0).expect("broadcast");
        if got != rank0 {
            eprintln!("rank {rank}: the weights differ from rank 0's");
            mpi.abort(1);
        }
        if rank == 0 {
            let mut single = trainer(1, Rc::new(SingleProcess), accumulate);
            train_on_all(&mut single, &batches);
            let (err, verdict) = difference(&got, &weights(&single), 1e-5);
            println!(
                "ddp {verdict} (accumulate {accumulate}): {world} ranks x 4 images vs 1 x {}: max relative difference {err:.1e}",
                4 * world
            );
            if verdict != "ok" {
                mpi.abort(1);
            }
        }
    }
    // Training mode with SyncBatchNorm: batch norm normalises over both ranks' 4 images, as one
    // process does over its 8.
    resnet_rs::train::dist::sync_batch_norm(Some(mpi.clone()));
    let mut ddp = trainer(rank as u64 + 1, mpi.clone(), 1);
    ddp.model().train();
    train_on_shard(&mut ddp, &batches, rank);
    resnet_rs::train::dist::sync_batch_norm(None);
    let got = state(&ddp);
    if rank == 0 {
        let mut single = trainer(1, Rc::new(SingleProcess), 1);
        single.model().train();
        train_on_all(&mut single, &batches);
        let (err, verdict) = difference(&got, &state(&single), 1e-4);
        println!(
            "sync-bn {verdict}: {world} ranks x 4 images vs 1 x {} in training mode: max relative difference {err:.1e}",
            4 * world
        );
        if verdict != "ok" {
            mpi.abort(1);
        }
    }
    mpi.barrier().expect("barrier");
}

/// One step per batch on this rank's 4 images of it.
fn train_on_shard(t: &mut Trainer, batches: &[(Tensor, Tensor)], rank: usize) {
    for (x, y) in batches {
        let mine = x.narrow(0, 4 * rank, 4).expect("shard").contiguous();
        let labels = y.narrow(0, 4 * rank, 4).expect("labels").contiguous();
        t.step(&mine, &labels).expect("step");
    }
}

/// One step per whole batch.
fn train_on_all(t: &mut Trainer, batches: &[(Tensor, Tensor)]) {
    for (x, y) in batches {
        t.step(x, y).expect("step");
    }
}

/// The largest difference of `got` from `want` over `want`'s largest magnitude, and "ok" when
/// it is within `tolerance` (and the lengths agree), "FAILED" otherwise.
fn difference(got: &[f32], want: &[f32], tolerance: f32) -> (f32, &'static str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    let ok = got.len() == want.len() && err <= tolerance;
    (err, if ok { "ok" } else { "FAILED" })
}

/// Every float of the model's state: weights and batch-norm running statistics.
fn state(t: &Trainer) -> Vec<f32> {
    t.model().state_dict().iter().filter_map(|(_, v)| v.to_vec_f32().ok()).flatten().collect()
}

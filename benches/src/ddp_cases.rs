//! Data-parallel cases, run under `mpirun` (the xtask starts them so, with the threads split
//! between the processes): one `train::Trainer::step` of DistributedDataParallel over Open MPI,
//! each process on its share of the global batch, the gradients all-reduced in buckets during
//! the backward pass. Rank 0 reports; images are the global batch's, so images/s compares with
//! the one-process case of the same name without `ddp-`.

use crate::{Case, Prepared};
use nn::{Method, ModuleExt, Optimizer};
use resnet::Arch;
use std::rc::Rc;
use tensor::{Rng, Tensor};
use train::dist::{Collective, Mpi};

pub fn cases() -> Vec<Case> {
    vec![Case { name: "ddp-train-resnet18-b64-64px".into(), prepare: Box::new(|| train(Arch::Resnet18, 64, 64, 10)) }]
}

fn train(arch: Arch, global_batch: usize, size: usize, classes: usize) -> Prepared {
    let mpi: Rc<dyn Collective> = Rc::new(Mpi::init().expect("MPI (run this case under mpirun)"));
    let (rank, world) = (mpi.rank(), mpi.world_size());
    crate::set_reporting_rank(rank);
    assert!(
        global_batch.is_multiple_of(world),
        "a global batch of {global_batch} does not split over {world} processes"
    );
    let batch = global_batch / world;
    let model = arch.build(classes, 0).expect("zoo model");
    model.train();
    // The same global batch everywhere; each process takes its slice, as a distributed sampler.
    let x = Tensor::randn(&[global_batch, 3, size, size], &mut Rng::seed(2));
    let x = x.narrow(0, rank * batch, batch).expect("shard").contiguous();
    let y = Tensor::from_vec_i64((0..batch).map(|i| ((rank * batch + i) % classes) as i64).collect(), &[batch])
        .expect("sized");
    let (_, macs) = model.output_shape(&[global_batch, 3, size, size]).expect("shape");
    let opt = Optimizer::new(Method::adam(), model.trainable_parameters(), 1e-3, 0.0).expect("optimizer");
    // DDP_BUCKET_CAP_MB: another bucket size, to see what the overlap is worth (a size above
    // the model's gradients makes one all-reduce after the backward pass).
    let bucket_cap_mb = std::env::var("DDP_BUCKET_CAP_MB")
        .ok()
        .map(|v| v.parse::<f64>().expect("DDP_BUCKET_CAP_MB: a size in MiB"))
        .unwrap_or(train::dist::BUCKET_CAP_MB);
    let config = train::TrainConfig { bucket_cap_mb, ..train::TrainConfig::default() };
    let mut trainer =
        train::Trainer::from_parts(model, opt, config).and_then(|t| t.with_collective(mpi)).expect("trainer");
    Prepared {
        run: Box::new(move || {
            let outcome = trainer.step(&x, &y).expect("step");
            assert!(matches!(outcome, train::StepOutcome::Updated { .. }), "{outcome:?}");
        }),
        flops: Some(3.0 * 2.0 * macs as f64),
        images: Some(global_batch),
    }
}

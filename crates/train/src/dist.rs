//! Collective operations for data-parallel training, behind one trait: [`SingleProcess`] (world
//! size 1, what every run without a launcher uses) and, with the `mpi` feature, `Mpi` over Open
//! MPI (`mpirun -np N ...`, on one machine or several). An NCCL implementation for GPUs (through
//! `cudarc`, behind the `cuda` feature) would be a third implementation of the same trait.
//!
//! What the trainer needs from it is DistributedDataParallel's: the same initial weights
//! everywhere ([`broadcast_parameters`]), the gradients averaged over the processes
//! ([`GradientBuckets`]: in buckets of ~25 MB, each all-reduced as soon as the backward pass has
//! finished its gradients, while it computes the earlier layers'), and sums of metrics
//! ([`Collective::all_reduce_sum_f64`]).

use crate::{config_err, Result, TrainError};
use nn::{ModuleExt, Var};
use std::collections::HashMap;
use tensor::Tensor;

/// The collective operations of a group of processes. Every process must make the same calls in
/// the same order (as with MPI and NCCL): a call that only some make waits forever.
pub trait Collective {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn world_size(&self) -> usize;
    /// Sums `values` elementwise over every process; every process gets the sums.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
    /// As [`Collective::all_reduce_sum`], in f64 (metrics, counts).
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces `values` in every process by `root`'s.
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()>;
    /// Waits until every process has reached it.
    fn barrier(&self) -> Result<()>;
    /// Sums buckets of `sizes` f32 over the processes while `fill` is still producing them:
    /// `fill` writes each bucket through the [`BucketSink`] and submits it, in index order; a
    /// submitted bucket's sum may start at once (the `Mpi` implementation starts a non-blocking
    /// all-reduce, so it overlaps what `fill` computes next). Buckets `fill` leaves unsubmitted
    /// are submitted after it returns, so every process makes the same collective calls.
    /// Returns the sums, bucket by bucket. This default sums each bucket when it is submitted,
    /// with [`Collective::all_reduce_sum`].
    fn all_reduce_buckets(
        &self,
        sizes: &[usize],
        fill: &mut dyn FnMut(&mut dyn BucketSink) -> Result<()>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut sink = BlockingSink {
            buckets: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            next: 0,
            reduce: &mut |values: &mut [f32]| self.all_reduce_sum(values),
        };
        fill(&mut sink)?;
        while sink.next < sizes.len() {
            sink.submit(sink.next)?;
        }
        Ok(sink.buckets)
    }
    /// Ends every process with `code`: a failed rank takes the others down instead of leaving
    /// them waiting in a collective call.
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _values: &mut [f32], root: usize) -> Result<()> {
        if root == 0 {
            Ok(())
        } else {
            Err(config_err(format!("broadcast from rank {root} in a world of 1")))
        }
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Where [`Collective::all_reduce_buckets`] takes the buckets from.
pub trait BucketSink {
    /// Bucket `index`'s buffer (zeros at first), to fill before submitting it.
    fn bucket(&mut self, index: usize) -> Result<&mut [f32]>;
    /// Hands bucket `index` over for summing; buckets go in index order, each once.
    fn submit(&mut self, index: usize) -> Result<()>;
}

fn check_submit(index: usize, next: usize) -> Result<()> {
    if index == next {
        Ok(())
    } else {
        Err(config_err(format!("gradient bucket {index} submitted out of order (bucket {next} is next)")))
    }
}

fn submitted(index: usize) -> TrainError {
    config_err(format!("gradient bucket {index} does not exist or was already submitted"))
}

/// The default [`Collective::all_reduce_buckets`]: each bucket summed when it is submitted.
struct BlockingSink<'r> {
    buckets: Vec<Vec<f32>>,
    next: usize,
    reduce: &'r mut dyn FnMut(&mut [f32]) -> Result<()>,
}

impl BucketSink for BlockingSink<'_> {
    fn bucket(&mut self, index: usize) -> Result<&mut [f32]> {
        if index < self.next {
            return Err(submitted(index));
        }
        self.buckets.get_mut(index).map(|b| &mut b[..]).ok_or_else(|| submitted(index))
    }
    fn submit(&mut self, index: usize) -> Result<()> {
        check_submit(index, self.next)?;
        let bucket = self.buckets.get_mut(index).ok_or_else(|| submitted(index))?;
        (self.reduce)(bucket)?;
        self.next += 1;
        Ok(())
    }
}

/// Called with each parameter whose gradient is final.
type ParamReady<'a> = dyn FnMut(&Var) -> Result<()> + 'a;

/// DistributedDataParallel's default bucket size (`bucket_cap_mb=25`).
pub const BUCKET_CAP_MB: f64 = 25.0;
/// DDP's first bucket (1 MiB): small, so that the first all-reduce starts early in the backward.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// How the trainable parameters' gradients are packed for the all-reduce, DDP's `Reducer`: the
/// parameters in reverse order (the order the backward pass finishes them), cut into buckets
/// of about `bucket_cap_mb` (the first of 1 MiB). [`GradientBuckets::backward`] hands each
/// bucket to the collective as soon as the backward pass has finished all its gradients.
#[derive(Debug, Clone)]
pub struct GradientBuckets {
    params: Vec<Var>,
    /// Each parameter's bucket and offset in it, by [`Var::id`].
    place: HashMap<u64, (usize, usize)>,
    /// Elements per bucket.
    sizes: Vec<usize>,
    /// Parameters per bucket.
    members: Vec<usize>,
}

impl GradientBuckets {
    /// Buckets for `params` (in the model's order), each closed once it holds at least
    /// `bucket_cap_mb` MiB of f32 (the first at [`FIRST_BUCKET_BYTES`]).
    pub fn new(params: &[Var], bucket_cap_mb: f64) -> GradientBuckets {
        let cap_bytes = (bucket_cap_mb * (1u64 << 20) as f64).max(1.0) as usize;
        let (mut place, mut sizes, mut members) = (HashMap::new(), Vec::new(), Vec::new());
        let (mut size, mut count) = (0usize, 0usize);
        for p in params.iter().rev() {
            place.insert(p.id(), (sizes.len(), size));
            size += p.value().numel();
            count += 1;
            let limit = if sizes.is_empty() { FIRST_BUCKET_BYTES.min(cap_bytes) } else { cap_bytes };
            if size * 4 >= limit {
                sizes.push(std::mem::take(&mut size));
                members.push(std::mem::take(&mut count));
            }
        }
        if count > 0 {
            sizes.push(size);
            members.push(count);
        }
        GradientBuckets { params: params.to_vec(), place, sizes, members }
    }

    /// Elements per bucket, in the order they are all-reduced.
    pub fn bucket_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// `loss.backward()`, then every parameter's gradient replaced by its mean over the
    /// processes: each bucket is all-reduced as soon as the backward pass has finished its
    /// gradients (including what earlier passes accumulated), overlapping the rest of the pass.
    /// With one process, a plain backward.
    pub fn backward(&self, collective: &dyn Collective, loss: &Var) -> Result<()> {
        if collective.world_size() == 1 {
            return Ok(loss.backward()?);
        }
        self.reduce(collective, &mut |ready| {
            // The hook's error type is nn's: a failed all-reduce is carried out beside it.
            let mut failure = None;
            let pass = loss.backward_with_hook(&mut |leaf| {
                ready(leaf).map_err(|e| {
                    let message = e.to_string();
                    failure = Some(e);
                    nn::NnError::Autograd(message)
                })
            });
            match (failure, pass) {
                (Some(e), _) => Err(e),
                (None, pass) => Ok(pass?),
            }
        })
    }

    /// Every parameter's current gradient replaced by its mean over the processes (after a
    /// backward pass that did not all-reduce, such as the last of a partial accumulation
    /// window).
    pub fn average(&self, collective: &dyn Collective) -> Result<()> {
        if collective.world_size() == 1 {
            return Ok(());
        }
        self.reduce(collective, &mut |ready| self.params.iter().rev().try_for_each(&mut *ready))
    }

    /// Runs `produce`, which calls `ready` with each parameter whose gradient is final, while
    /// the collective sums the buckets they complete; then sets the means. A parameter never
    /// reported (no gradient) counts as zeros, so every process sends the same layout.
    fn reduce(
        &self,
        collective: &dyn Collective,
        produce: &mut dyn FnMut(&mut ParamReady) -> Result<()>,
    ) -> Result<()> {
        let world = collective.world_size();
        let sums = collective.all_reduce_buckets(&self.sizes, &mut |sink| {
            let mut filled = vec![0usize; self.sizes.len()];
            let mut next = 0;
            produce(&mut |param| {
                let Some(&(bucket, offset)) = self.place.get(&param.id()) else { return Ok(()) };
                if let Some(grad) = param.grad() {
                    // Straight from the gradient's buffer into the bucket (a host gradient is
                    // not copied first; a GPU one is read back once).
                    let host = grad.to_device(tensor::Device::Cpu)?;
                    let values = host.f32_data("gradient all-reduce")?;
                    sink.bucket(bucket)?[offset..offset + values.len()].copy_from_slice(&values);
                }
                filled[bucket] += 1;
                while next < self.sizes.len() && filled[next] == self.members[next] {
                    sink.submit(next)?;
                    next += 1;
                }
                Ok(())
            })
        })?;
        let scale = 1.0 / world as f32;
        for p in &self.params {
            let (bucket, offset) = self.place[&p.id()];
            let value = p.value();
            let mean: Vec<f32> = sums[bucket][offset..offset + value.numel()].iter().map(|v| v * scale).collect();
            p.set_grad(Some(Tensor::from_vec(mean, value.shape())?.to_device(value.device())?));
        }
        Ok(())
    }
}

/// Rank 0's weights and buffers (batch-norm statistics) copied to every process, as DDP does
/// when it wraps a model: the processes then start from the same model whatever their seeds.
pub fn broadcast_parameters(collective: &dyn Collective, model: &dyn nn::Module) -> Result<()> {
    let vars: Vec<Var> = model.named_parameters().into_iter().chain(model.named_buffers()).map(|(_, v)| v).collect();
    broadcast_vars(collective, &vars)
}

/// Rank 0's buffers (batch-norm running statistics) copied to every process: DDP's
/// `broadcast_buffers=True`, done before each training step, so the model every process
/// evaluates and rank 0 saves is one model.
pub fn broadcast_buffers(collective: &dyn Collective, model: &dyn nn::Module) -> Result<()> {
    let vars: Vec<Var> = model.named_buffers().into_iter().map(|(_, v)| v).collect();
    broadcast_vars(collective, &vars)
}

fn broadcast_vars(collective: &dyn Collective, vars: &[Var]) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    for v in vars {
        let value = v.value();
        if value.dtype() != tensor::DType::F32 {
            // Counters (num_batches_tracked) advance in step everywhere already.
            continue;
        }
        let mut data = value.to_vec_f32()?;
        collective.broadcast(&mut data, 0)?;
        v.set_value(Tensor::from_vec(data, value.shape())?.to_device(value.device())?);
    }
    Ok(())
}

/// Makes every training-mode batch norm on this thread a SyncBatchNorm over `collective`
/// (`torch.nn.SyncBatchNorm`): each normalises with the statistics of every process's batch
/// together, so N processes x batch B train as one process x batch N x B. `None` goes back to
/// per-process statistics (DDP's default).
pub fn sync_batch_norm(collective: Option<std::rc::Rc<dyn Collective>>) {
    nn::set_sync_batch_norm(collective.map(|c| std::rc::Rc::new(Group(c)) as std::rc::Rc<dyn nn::ProcessGroup>));
}

/// A collective as the process group of `nn`'s SyncBatchNorm.
struct Group(std::rc::Rc<dyn Collective>);

impl nn::ProcessGroup for Group {
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> std::result::Result<(), String> {
        self.0.all_reduce_sum(values).map_err(|e| e.to_string())
    }
}

/// Open MPI (or any MPI) through the `mpi` crate: the processes `mpirun` started.
#[cfg(feature = "mpi")]
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: mpi::topology::SimpleCommunicator,
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Whether this process was started by an MPI launcher (`mpirun`, `srun`): the variables
    /// Open MPI, MPICH and PMIx set.
    pub fn launched() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some())
    }

    /// Initialises MPI (once per process).
    pub fn init() -> Result<Mpi> {
        let universe = mpi::initialize().ok_or_else(|| config_err("MPI was already initialised in this process"))?;
        let world = universe.world();
        Ok(Mpi { _universe: universe, world })
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.rank() as usize
    }
    fn world_size(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()> {
        use mpi::collective::Root;
        use mpi::topology::Communicator;
        if root >= self.world_size() {
            return Err(config_err(format!("broadcast from rank {root} in a world of {}", self.world_size())));
        }
        self.world.process_at_rank(root as i32).broadcast_into(values);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        use mpi::collective::CommunicatorCollectives;
        self.world.barrier();
        Ok(())
    }
    fn all_reduce_buckets(
        &self,
        sizes: &[usize],
        fill: &mut dyn FnMut(&mut dyn BucketSink) -> Result<()>,
    ) -> Result<Vec<Vec<f32>>> {
        // Buffers live outside the scope: MPI reads and writes them until each request ends.
        let mut send: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut sums: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        mpi::request::scope(|scope| {
            let mut sink = MpiSink {
                world: &self.world,
                scope,
                send: send.iter_mut().map(Some).collect(),
                sums: sums.iter_mut().map(Some).collect(),
                in_flight: Vec::new(),
                next: 0,
            };
            let mut outcome = fill(&mut sink);
            while outcome.is_ok() && sink.next < sizes.len() {
                outcome = sink.submit(sink.next);
            }
            // Every started request must end inside the scope, error or not.
            for request in sink.in_flight.drain(..) {
                request.wait_without_status();
            }
            outcome
        })?;
        Ok(sums)
    }
    fn abort(&self, code: i32) -> ! {
        use mpi::topology::Communicator;
        self.world.abort(code)
    }
}

/// [`Mpi`]'s buckets: each submitted bucket starts a non-blocking all-reduce
/// (`MPI_Iallreduce`); every submission also tests the ones in flight, which is when Open MPI
/// advances them.
#[cfg(feature = "mpi")]
struct MpiSink<'a, 's> {
    world: &'a mpi::topology::SimpleCommunicator,
    scope: &'s mpi::request::LocalScope<'a>,
    send: Vec<Option<&'a mut Vec<f32>>>,
    sums: Vec<Option<&'a mut Vec<f32>>>,
    in_flight: Vec<mpi::request::Request<'a, [f32], &'s mpi::request::LocalScope<'a>>>,
    next: usize,
}

#[cfg(feature = "mpi")]
impl BucketSink for MpiSink<'_, '_> {
    fn bucket(&mut self, index: usize) -> Result<&mut [f32]> {
        match self.send.get_mut(index) {
            Some(Some(buffer)) => Ok(&mut buffer[..]),
            _ => Err(submitted(index)),
        }
    }
    fn submit(&mut self, index: usize) -> Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        check_submit(index, self.next)?;
        let (Some(send), Some(sum)) =
            (self.send.get_mut(index).and_then(Option::take), self.sums.get_mut(index).and_then(Option::take))
        else {
            return Err(submitted(index));
        };
        let send: &[f32] = send;
        let request = self.world.immediate_all_reduce_into(self.scope, send, &mut sum[..], SystemOperation::sum());
        self.in_flight.push(request);
        self.next += 1;
        self.in_flight = std::mem::take(&mut self.in_flight).into_iter().filter_map(|r| r.test().err()).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn::Module;
    use std::cell::RefCell;
    use tensor::Rng;

    /// Two processes whose other one holds the same gradients: every sum doubles. It records,
    /// per all-reduce, the elements summed and how many parameters had a gradient by then.
    struct Twin<'p> {
        params: &'p [Var],
        calls: RefCell<Vec<(usize, usize)>>,
    }

    impl Collective for Twin<'_> {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
            let with_grad = self.params.iter().filter(|p| p.grad().is_some()).count();
            self.calls.borrow_mut().push((values.len(), with_grad));
            values.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
            values.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn broadcast(&self, _values: &mut [f32], _root: usize) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort({code})")
        }
    }

    fn params(sizes: &[usize]) -> Vec<Var> {
        sizes.iter().map(|&n| Var::parameter(Tensor::zeros(&[n]))).collect()
    }

    #[test]
    fn buckets_follow_ddp_reverse_order_with_a_small_first_bucket() {
        // 1 MiB is 262,144 f32; buckets close once they reach their cap.
        let ps = params(&[100, 300_000, 200_000, 50_000, 10]);
        let b = GradientBuckets::new(&ps, 1.5);
        // Reversed: 10 + 50,000 + 200,000 + 300,000 passes 1 MiB; then 100 alone.
        assert_eq!(b.bucket_sizes(), &[550_010, 100]);
        let b = GradientBuckets::new(&ps, 0.5);
        assert_eq!(b.bucket_sizes(), &[250_010, 300_000, 100]);
        assert_eq!(GradientBuckets::new(&params(&[5]), 25.0).bucket_sizes(), &[5]);
        assert!(GradientBuckets::new(&[], 25.0).bucket_sizes().is_empty());
    }

    #[test]
    fn bucketed_backward_averages_every_gradient_and_starts_before_the_pass_ends() {
        let mut config = resnet::Arch::Resnet18.config(3);
        config.base_planes = 8;
        let model = config.build(resnet::Init::Torchvision(1)).expect("model");
        let x = Var::constant(Tensor::randn(&[2, 3, 32, 32], &mut Rng::seed(4)));
        let labels = Tensor::from_vec_i64(vec![0, 2], &[2]).expect("labels");
        let loss = || nn::CrossEntropyLoss::default().forward(&model.forward(&x).expect("forward"), &labels);
        let ps = model.trainable_parameters();
        loss().expect("loss").backward().expect("backward");
        let plain: Vec<Vec<f32>> = ps.iter().map(|p| p.grad().expect("grad").to_vec_f32().expect("f32")).collect();
        ps.iter().for_each(Var::zero_grad);

        // Small buckets, so that there are several.
        let buckets = GradientBuckets::new(&ps, 0.05);
        assert!(buckets.bucket_sizes().len() >= 4, "{:?}", buckets.bucket_sizes());
        let twin = Twin { params: &ps, calls: RefCell::new(Vec::new()) };
        buckets.backward(&twin, &loss().expect("loss")).expect("bucketed backward");
        let bucketed: Vec<Vec<f32>> = ps.iter().map(|p| p.grad().expect("grad").to_vec_f32().expect("f32")).collect();
        assert_eq!(bucketed, plain, "the mean of two equal gradients is the gradient");
        let calls = twin.calls.take();
        let sizes: Vec<usize> = calls.iter().map(|c| c.0).collect();
        assert_eq!(sizes, buckets.bucket_sizes());
        assert!(calls[0].1 < ps.len() / 2, "the first bucket went while most gradients were still to come: {calls:?}");

        // After a pass without all-reduce (a partial accumulation window), average() alone.
        loss().expect("loss").backward().expect("backward");
        buckets.average(&twin).expect("average");
        let twice: Vec<Vec<f32>> = ps.iter().map(|p| p.grad().expect("grad").to_vec_f32().expect("f32")).collect();
        let expected: Vec<Vec<f32>> = plain.iter().map(|g| g.iter().map(|v| v + v).collect()).collect();
        assert_eq!(twice, expected);
    }
}

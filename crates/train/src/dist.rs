//! Collective operations for data-parallel training, behind one trait: [`SingleProcess`] (world
//! size 1, what every run without a launcher uses) and, with the `mpi` feature, `Mpi` over Open
//! MPI (`mpirun -np N ...`, on one machine or several). An NCCL implementation for GPUs (through
//! `cudarc`, behind the `cuda` feature) would be a third implementation of the same trait.
//!
//! What the trainer needs from it is DistributedDataParallel's: the same initial weights
//! everywhere ([`broadcast_parameters`]), the gradients averaged over the processes after each
//! backward ([`average_gradients`]), and sums of metrics ([`Collective::all_reduce_sum_f64`]).

use crate::{config_err, Result};
use nn::{ModuleExt, Var};
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

/// Every trainable parameter's gradient replaced by its mean over the processes (DDP's
/// all-reduce), in one flat buffer: each process then takes the same optimizer step. A
/// parameter without a gradient counts as zeros, so every process sends the same layout.
pub fn average_gradients(collective: &dyn Collective, params: &[Var]) -> Result<()> {
    let world = collective.world_size();
    if world == 1 {
        return Ok(());
    }
    let mut flat = Vec::new();
    for p in params {
        match p.grad() {
            Some(g) => flat.extend(g.to_vec_f32()?),
            None => flat.extend(std::iter::repeat_n(0.0, p.value().numel())),
        }
    }
    collective.all_reduce_sum(&mut flat)?;
    let scale = 1.0 / world as f32;
    let mut at = 0;
    for p in params {
        let value = p.value();
        let n = value.numel();
        let mean: Vec<f32> = flat[at..at + n].iter().map(|v| v * scale).collect();
        p.set_grad(Some(Tensor::from_vec(mean, value.shape())?.to_device(value.device())?));
        at += n;
    }
    Ok(())
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
    fn abort(&self, code: i32) -> ! {
        use mpi::topology::Communicator;
        self.world.abort(code)
    }
}

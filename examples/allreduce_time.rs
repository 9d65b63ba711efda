//! How long the gradient all-reduce of a ResNet-50 (25.6 M f32) takes between the processes
//! `mpirun` started: the median of 10 after 2 warm-ups, and the bytes moved per second.
//!
//! ```text
//! mpirun --allow-run-as-root -np 2 target/release/examples/allreduce_time
//! ```
use resnet_rs::train::dist::{Collective, Mpi};
use std::time::Instant;

fn main() {
    let mpi = Mpi::init().expect("MPI");
    const N: usize = 25_557_032; // torchvision's resnet50 parameter count
    let mut grads = vec![1.0f32; N];
    let mut times = Vec::new();
    for i in 0..12 {
        mpi.barrier().expect("barrier");
        let t = Instant::now();
        mpi.all_reduce_sum(&mut grads).expect("all-reduce");
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if mpi.rank() == 0 {
        let mb = (N * 4) as f64 / 1e6;
        println!(
            "all-reduce of {N} f32 ({mb:.0} MB) over {} processes: median {:.1} ms, {:.2} GB/s of gradient",
            mpi.world_size(),
            median * 1e3,
            mb / 1e3 / median
        );
    }
}

//! `with_workers_awake`: its result is the closure's, parallel loops inside it run on the
//! pool's workers, and passes run side by side (each inside another's parallel loop) finish —
//! a worker waiting inside one pass may pick up the other's keep-awake job.

use rayon::prelude::*;
use tensor::with_workers_awake;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

#[test]
fn returns_the_closures_result_with_loops_inside() {
    for threads in [1, 2, 4] {
        let sum =
            pool(threads).install(|| with_workers_awake(|| (0..10_000u64).into_par_iter().map(|x| x * x).sum::<u64>()));
        assert_eq!(sum, (0..10_000u64).map(|x| x * x).sum::<u64>(), "{threads} threads");
        // From outside any pool (the global one).
        assert_eq!(with_workers_awake(|| 7), 7);
    }
}

#[test]
fn passes_side_by_side_finish() {
    let got: Vec<u64> = pool(2).install(|| {
        (0..8u64)
            .into_par_iter()
            .map(|i| {
                with_workers_awake(|| {
                    // Several loops in a row, as a forward pass's layers.
                    (0..20).map(|_| (0..2_000u64).into_par_iter().map(|x| x * i).sum::<u64>()).sum::<u64>()
                })
            })
            .collect()
    });
    let want: Vec<u64> = (0..8u64).map(|i| 20 * (0..2_000u64).map(|x| x * i).sum::<u64>()).collect();
    assert_eq!(got, want);
}

//! The data-loading cases: the tutorial's train and eval pipelines over a folder of 256
//! photo-sized (500x375) JPEGs, batch 32, two worker threads; one timed run is one epoch.
//! `images` is the folder's size, so the table's images/s is the loader's throughput.
//!
//! The folder is the data crate's demo dataset at 500x375, generated once (deterministically)
//! into `$RESNET_RS_BENCH_DATA` or `<temp dir>/resnet-rs-bench-data-v1`; torch_cases.py reads
//! the same folder, so both sides decode the very same files. `cargo xtask bench --vs-torch`
//! runs our case first, which creates it.

use super::{Case, Prepared};
use data::{presets, DemoConfig, ImageFolder, Loader, LoaderConfig};
use std::path::PathBuf;

const BATCH: usize = 32;
const WORKERS: usize = 2;

/// The benchmark folder (keep in step with `bench_data_root` in torch_cases.py).
fn bench_data_root() -> PathBuf {
    std::env::var_os("RESNET_RS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("resnet-rs-bench-data-v1"))
}

/// 8 classes x 32 training pictures of 500x375, JPEG quality 90 (the validation half is empty).
fn bench_config() -> DemoConfig {
    DemoConfig { classes: 8, train_per_class: 32, val_per_class: 0, width: 500, height: 375, jpeg_quality: 90, seed: 0 }
}

fn loader_case(train: bool) -> Prepared {
    let demo = data::write_demo_dataset(bench_data_root(), &bench_config()).expect("writing the benchmark folder");
    let folder = ImageFolder::new(&demo.train).expect("listing the benchmark folder");
    let images = folder.len();
    let config = LoaderConfig::new(BATCH).shuffle(train).num_workers(WORKERS).seed(0);
    let loader = if train {
        Loader::new(folder, presets::imagenet_train(224).expect("valid preset"), config)
    } else {
        Loader::new(folder, presets::imagenet_eval(256, 224).expect("valid preset"), config)
    }
    .expect("valid loader");
    let mut epoch = 0;
    Prepared {
        run: Box::new(move || {
            for batch in loader.iter_epoch(epoch) {
                std::hint::black_box(batch.expect("benchmark batch"));
            }
            epoch += 1;
        }),
        flops: None,
        images: Some(images),
    }
}

/// One picture of the benchmark folder (generated if needed): the photo `predict-cold-resnet50`
/// classifies.
pub(crate) fn a_picture() -> PathBuf {
    let demo = data::write_demo_dataset(bench_data_root(), &bench_config()).expect("writing the benchmark folder");
    let folder = ImageFolder::new(&demo.train).expect("listing the benchmark folder");
    folder.samples()[0].0.clone()
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        Case { name: "data-train-b32".into(), prepare: Box::new(|| loader_case(true)) },
        Case { name: "data-eval-b32".into(), prepare: Box::new(|| loader_case(false)) },
    ]
}

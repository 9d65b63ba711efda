//! The loader: batch order and contents independent of the worker count, lengths, shuffling,
//! bounded prefetch, and every failure ending in an error (never a hang).

use data::transforms::Rng;
use data::{
    presets, Compose, DataError, Dataset, Example, ImageFolder, Loader, LoaderConfig, RgbImage, Sample, ToTensor,
    Transform,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Images made from their index, without files: sizes vary so that the transform must crop.
#[derive(Debug, Default)]
struct Synthetic {
    n: usize,
    loaded: Arc<AtomicUsize>,
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, index: usize) -> data::Result<Example> {
        self.loaded.fetch_add(1, Ordering::SeqCst);
        let (w, h) = (20 + index % 7, 15 + index % 5);
        let mut rng = Rng::seed(index as u64);
        let image = RgbImage::from_raw(w, h, (0..w * h * 3).map(|_| rng.below(256) as u8).collect())?;
        Ok(Example { image, label: index % 3, path: PathBuf::from(format!("synthetic/{index}")) })
    }
}

fn synthetic(n: usize) -> Synthetic {
    Synthetic { n, loaded: Arc::default() }
}

fn collect(loader: &Loader, epoch: u64) -> Vec<(Vec<f32>, Vec<i64>, Vec<usize>)> {
    loader
        .iter_epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            assert_eq!(b.images.shape()[0], b.len());
            (b.images.to_vec_f32().unwrap(), b.labels.to_vec_i64().unwrap(), b.indices)
        })
        .collect()
}

#[test]
fn batches_are_identical_for_any_worker_count() {
    let cfg = LoaderConfig::new(4).shuffle(true).seed(11);
    let make = |workers| {
        Loader::new(synthetic(23), presets::imagenet_train(12).unwrap(), cfg.clone().num_workers(workers)).unwrap()
    };
    let base = make(0);
    assert_eq!(base.len(), 6);
    let epoch0 = collect(&base, 0);
    assert_eq!(epoch0.len(), 6);
    assert_eq!(epoch0.last().unwrap().2.len(), 3);
    for workers in [1, 2, 5, 16] {
        assert_eq!(collect(&make(workers), 0), epoch0, "{workers} workers");
    }
    // Same epoch again: same batches; another epoch: another order and other augmentations.
    assert_eq!(collect(&base, 0), epoch0);
    let epoch1 = collect(&base, 1);
    assert_ne!(epoch1.iter().map(|b| &b.2).collect::<Vec<_>>(), epoch0.iter().map(|b| &b.2).collect::<Vec<_>>());
    // Each epoch visits every sample once, with its own label.
    for epoch in [&epoch0, &epoch1] {
        let mut seen: Vec<usize> = epoch.iter().flat_map(|b| b.2.clone()).collect();
        for b in epoch.iter() {
            assert_eq!(b.1, b.2.iter().map(|i| (i % 3) as i64).collect::<Vec<_>>());
            assert_eq!(b.0.len(), b.2.len() * 3 * 12 * 12);
        }
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
    }
}

#[test]
fn an_epoch_resumed_from_a_position_yields_the_same_tail_without_loading_the_head() {
    let cfg = LoaderConfig::new(4).shuffle(true).seed(5);
    for workers in [0, 2] {
        let data = synthetic(23);
        let loaded = Arc::clone(&data.loaded);
        let loader = Loader::new(data, presets::imagenet_train(12).unwrap(), cfg.clone().num_workers(workers)).unwrap();
        let full = collect(&loader, 3);
        let positions: Vec<usize> = loader.iter_epoch(3).map(|b| b.unwrap().position).collect();
        assert_eq!(positions, (0..6).collect::<Vec<_>>());
        for first in [0, 1, 4, 5, 6, 9] {
            loaded.store(0, Ordering::SeqCst);
            let tail: Vec<_> = loader
                .iter_epoch_from(3, first)
                .map(|b| {
                    let b = b.unwrap();
                    (b.position, b.images.to_vec_f32().unwrap(), b.labels.to_vec_i64().unwrap(), b.indices)
                })
                .collect();
            let expected: Vec<_> = full.iter().enumerate().skip(first).collect();
            assert_eq!(tail.len(), expected.len(), "from {first} with {workers} workers");
            for (got, (pos, want)) in tail.iter().zip(expected) {
                assert_eq!(got.0, pos);
                assert_eq!((&got.1, &got.2, &got.3), (&want.0, &want.1, &want.2));
            }
            let head: usize = full.iter().take(first).map(|b| b.2.len()).sum();
            assert_eq!(loaded.load(Ordering::SeqCst), 23 - head.min(23), "from {first}: only the tail is loaded");
        }
    }
}

#[test]
fn lengths_drop_last_and_order_without_shuffle() {
    let t = || presets::imagenet_eval(14, 12).unwrap();
    let l = Loader::new(synthetic(10), t(), LoaderConfig::new(4)).unwrap();
    assert_eq!((l.len(), l.num_samples()), (3, 10));
    let sizes: Vec<usize> = l.iter_epoch(0).map(|b| b.unwrap().len()).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(l.batch_indices(5), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    let l = Loader::new(synthetic(10), t(), LoaderConfig::new(4).drop_last(true).num_workers(2)).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l.iter_epoch(0).map(|b| b.unwrap().len()).collect::<Vec<_>>(), [4, 4]);
    let l = Loader::new(synthetic(3), t(), LoaderConfig::new(4).drop_last(true)).unwrap();
    assert!(l.is_empty() && l.iter_epoch(0).next().is_none());
    let l = Loader::new(synthetic(0), t(), LoaderConfig::new(4).num_workers(3)).unwrap();
    assert!(l.is_empty() && l.iter_epoch(0).next().is_none());
    assert!(Loader::new(synthetic(3), t(), LoaderConfig::new(0)).is_err());
    assert!(Loader::new(synthetic(3), t(), LoaderConfig::new(1).prefetch_factor(0)).is_err());
    // The shapes and dtypes the model side expects.
    let b = Loader::new(synthetic(5), t(), LoaderConfig::new(5)).unwrap().iter_epoch(0).next().unwrap().unwrap();
    assert_eq!(b.images.shape(), &[5, 3, 12, 12]);
    assert_eq!(b.labels.shape(), &[5]);
    assert_eq!(b.labels.dtype(), tensor::DType::I64);
    assert_eq!(b.paths[2], Path::new("synthetic/2"));
}

#[test]
fn prefetch_is_bounded() {
    let ds = synthetic(200);
    let loaded = Arc::clone(&ds.loaded);
    let cfg = LoaderConfig::new(2).num_workers(2).prefetch_factor(2);
    let l = Loader::new(ds, presets::imagenet_eval(14, 12).unwrap(), cfg).unwrap();
    let mut it = l.iter_epoch(0);
    it.next().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // One batch consumed plus at most 2 workers x 2 batches in flight, of 2 samples each.
    let n = loaded.load(Ordering::SeqCst);
    assert!(n <= (1 + 4) * 2, "{n} samples loaded ahead of a stalled consumer");
    // Dropping mid-epoch stops the workers promptly.
    let t = Instant::now();
    drop(it);
    assert!(t.elapsed() < Duration::from_secs(2));
    let after = loaded.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(loaded.load(Ordering::SeqCst), after, "workers kept loading after the iterator was dropped");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `root/{a,b}/<i>.png`, 8 good images, plus a corrupt `a/3_bad.png` (listed fourth in `a`).
fn folder_with_a_bad_image() -> (tempfile::TempDir, ImageFolder) {
    let dir = tempfile::tempdir().unwrap();
    for (c, i) in [("a", 0), ("a", 1), ("a", 2), ("a", 4), ("b", 0), ("b", 1), ("b", 2), ("b", 3)] {
        let img = RgbImage::from_raw(8, 6, vec![(i * 40) as u8; 8 * 6 * 3]).unwrap();
        write(&dir.path().join(c).join(format!("{i}.png")), &img.to_png().unwrap());
    }
    write(&dir.path().join("a/3_bad.png"), b"\x89PNG\r\n\x1a\ngarbage");
    let folder = ImageFolder::new(dir.path()).unwrap();
    (dir, folder)
}

#[test]
fn a_corrupt_image_is_an_error_naming_it() {
    let (_dir, folder) = folder_with_a_bad_image();
    for workers in [0, 2] {
        let l = Loader::new(
            folder.clone(),
            presets::imagenet_eval(8, 6).unwrap(),
            LoaderConfig::new(3).num_workers(workers),
        )
        .unwrap();
        let results: Vec<_> = l.iter_epoch(0).collect();
        // Batch 0 holds samples 0-2; batch 1 holds the bad one: an error, and the epoch ends.
        assert_eq!(results.len(), 2, "{workers} workers");
        assert!(results[0].is_ok());
        let e = results[1].as_ref().unwrap_err();
        assert!(matches!(e, DataError::Decode { .. }) && e.to_string().contains("3_bad.png"), "{e}");
    }
}

#[test]
fn a_corrupt_image_can_be_skipped_with_a_warning() {
    let (_dir, folder) = folder_with_a_bad_image();
    for workers in [0, 3] {
        let cfg = LoaderConfig::new(3).num_workers(workers).skip_bad_images(true);
        let l = Loader::new(folder.clone(), presets::imagenet_eval(8, 6).unwrap(), cfg).unwrap();
        let batches: Vec<_> = l.iter_epoch(0).map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [3, 2, 3]);
        assert_eq!(batches[1].skipped.len(), 1);
        assert!(batches[1].skipped[0].to_string().contains("3_bad.png"));
        assert_eq!(batches[1].labels.shape(), &[2]);
        assert!(batches[1].paths.iter().all(|p| !p.ends_with("3_bad.png")));
    }
}

#[test]
fn a_batch_of_only_bad_images_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a/0.png"), b"bad");
    write(&dir.path().join("a/1.png"), b"bad");
    write(&dir.path().join("b/0.png"), &RgbImage::new(4, 4).to_png().unwrap());
    let folder = ImageFolder::new(dir.path()).unwrap();
    let l =
        Loader::new(folder, presets::imagenet_eval(4, 4).unwrap(), LoaderConfig::new(2).skip_bad_images(true)).unwrap();
    let batches: Vec<_> = l.iter_epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].labels.to_vec_i64().unwrap(), [1]);
}

#[derive(Debug)]
struct PanicOn(usize);

impl Transform for PanicOn {
    fn apply(&self, x: Sample, rng: &mut Rng) -> data::Result<Sample> {
        if let Sample::Image(i) = &x {
            if i.width() == 20 + self.0 % 7 && i.height() == 15 + self.0 % 5 {
                panic!("transform bug on purpose");
            }
        }
        ToTensor.apply(data::CenterCrop::new(8)?.apply(x, rng)?, rng)
    }
}

#[test]
fn a_panicking_transform_is_an_error_not_a_hang() {
    let l = Loader::new(synthetic(12), PanicOn(5), LoaderConfig::new(2).num_workers(2)).unwrap();
    let t = Instant::now();
    let results: Vec<_> = l.iter_epoch(0).collect();
    assert!(t.elapsed() < Duration::from_secs(5));
    let e = results.last().unwrap().as_ref().unwrap_err();
    assert!(matches!(e, DataError::Worker { batch: 2, .. }) && e.to_string().contains("on purpose"), "{e}");
    assert!(results[..results.len() - 1].iter().all(Result::is_ok));
}

#[test]
fn transforms_that_cannot_be_batched_are_errors() {
    // No crop: sizes differ within a batch.
    let l = Loader::new(synthetic(4), Compose::default().push(ToTensor), LoaderConfig::new(4).num_workers(1)).unwrap();
    let e = l.iter_epoch(0).next().unwrap().unwrap_err();
    assert!(matches!(e, DataError::BatchShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("synthetic/0") && e.to_string().contains("synthetic/1"), "{e}");
    // No ToTensor: images are not tensors.
    let l = Loader::new(synthetic(2), data::CenterCrop::new(4).unwrap(), LoaderConfig::new(2)).unwrap();
    let e = l.iter_epoch(0).next().unwrap().unwrap_err();
    assert!(e.to_string().contains("ToTensor"), "{e}");
}

#[test]
fn predict_style_single_image_tensor() {
    let (dir, _) = folder_with_a_bad_image();
    let t = data::load_image_tensor(dir.path().join("b/2.png"), &presets::imagenet_eval(8, 6).unwrap()).unwrap();
    assert_eq!(t.shape(), &[3, 6, 6]);
    let v = t.to_vec_f32().unwrap();
    assert!((v[0] - (80.0 / 255.0 - 0.485) / 0.229).abs() < 1e-6);
    let e =
        data::load_image_tensor(dir.path().join("a/3_bad.png"), &presets::imagenet_eval(8, 6).unwrap()).unwrap_err();
    assert!(e.to_string().contains("3_bad.png"));
}

#[test]
fn every_bad_image_of_a_folder_is_found_in_index_order() {
    let (dir, _) = folder_with_a_bad_image();
    write(&dir.path().join("b/0_empty.jpg"), b"");
    write(&dir.path().join("b/9_truncated.png"), &RgbImage::new(5, 5).to_png().unwrap()[..30]);
    let folder = ImageFolder::new(dir.path()).unwrap();
    for threads in [1, 3] {
        let bad = data::find_bad_images(&folder, threads).unwrap();
        let names: Vec<String> = bad
            .iter()
            .map(|(i, e)| {
                assert!(e.is_bad_image() && e.to_string().contains(folder.samples()[*i].0.to_str().unwrap()), "{e}");
                folder.samples()[*i].0.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, ["3_bad.png", "0_empty.jpg", "9_truncated.png"], "{threads} threads");
    }
}

/// A shard is PyTorch's `DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=False)`:
/// the expected lists are what PyTorch 1.13 prints for them. Shuffled, the shards of one epoch
/// partition that epoch's global order; without padding (evaluation) every sample is seen once.
#[test]
fn shards_take_what_pytorchs_distributed_sampler_takes() {
    let t = || presets::imagenet_eval(14, 12).unwrap();
    let shard = |n: usize, rank: usize, world_size: usize, pad: bool, shuffle: bool| {
        let config = LoaderConfig::new(2).shuffle(shuffle).seed(9).shard(Some(data::Shard { rank, world_size, pad }));
        Loader::new(synthetic(n), t(), config).unwrap()
    };
    let cases: [(usize, usize, &[&[usize]]); 6] = [
        (5, 2, &[&[0, 2, 4], &[1, 3, 0]]),
        (5, 3, &[&[0, 3], &[1, 4], &[2, 0]]),
        (7, 2, &[&[0, 2, 4, 6], &[1, 3, 5, 0]]),
        (7, 3, &[&[0, 3, 6], &[1, 4, 0], &[2, 5, 1]]),
        (1, 2, &[&[0], &[0]]),
        (1, 3, &[&[0], &[0], &[0]]),
    ];
    for (n, world, want) in cases {
        for (rank, want) in want.iter().enumerate() {
            let l = shard(n, rank, world, true, false);
            assert_eq!(l.epoch_order(0), *want, "n {n}, world {world}, rank {rank}");
            assert_eq!((l.samples_per_epoch(), l.len()), (want.len(), want.len().div_ceil(2)));
        }
    }
    let whole = Loader::new(synthetic(11), t(), LoaderConfig::new(2).shuffle(true).seed(9)).unwrap();
    for pad in [true, false] {
        let shards: Vec<Vec<usize>> = (0..3).map(|r| shard(11, r, 3, pad, true).epoch_order(4)).collect();
        if pad {
            assert!(shards.iter().all(|s| s.len() == 4), "equal shares: {shards:?}");
        } else {
            let mut seen = shards.concat();
            seen.sort();
            assert_eq!(seen, (0..11).collect::<Vec<_>>(), "evaluation sees every sample once");
        }
        let global = whole.epoch_order(4);
        let interleaved: Vec<usize> = (0..11).map(|i| shards[i % 3][i / 3]).collect();
        assert_eq!(interleaved, global, "rank r takes every third index from r (pad {pad})");
    }
    // A shard's batches are the samples the whole loader would build for those indices.
    let b = shard(5, 1, 2, true, false).iter_epoch(0).next().unwrap().unwrap();
    assert_eq!(b.indices, [1, 3]);
    assert!(Loader::new(
        synthetic(3),
        t(),
        LoaderConfig::new(1).shard(Some(data::Shard { rank: 2, world_size: 2, pad: true }))
    )
    .is_err());
}

//! The demo dataset: deterministic, an ImageFolder with the right classes and counts, reused
//! when identical, never written over something else, and not solvable by colour alone.

use data::demo::{render, DEMO_CLASSES};
use data::transforms::Rng;
use data::{write_demo_dataset, DemoConfig, ImageFolder};

fn small() -> DemoConfig {
    DemoConfig { classes: 3, train_per_class: 4, val_per_class: 2, width: 40, height: 30, ..DemoConfig::default() }
}

#[test]
fn writes_two_image_folders_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_demo_dataset(dir.path().join("a"), &small()).unwrap();
    assert!(!a.reused);
    assert_eq!(a.classes, ["circle", "crescent", "cross"]);
    let train = ImageFolder::new(&a.train).unwrap();
    let val = ImageFolder::new(&a.val).unwrap();
    assert_eq!(train.classes(), a.classes);
    assert_eq!(val.classes(), a.classes);
    assert_eq!((train.len(), val.len()), (12, 6));
    assert_eq!((a.train_images, a.val_images), (12, 6));
    let first = data::Dataset::get(&train, 0).unwrap();
    assert_eq!((first.image.width(), first.image.height()), (40, 30));

    // Same configuration elsewhere: the same bytes.
    let b = write_demo_dataset(dir.path().join("b"), &small()).unwrap();
    for (p, _) in train.samples() {
        let rel = p.strip_prefix(&a.root).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), std::fs::read(b.root.join(rel)).unwrap(), "{}", rel.display());
    }
    // Asking again reuses it; another configuration or foreign content is refused.
    assert!(write_demo_dataset(&a.root, &small()).unwrap().reused);
    let other = DemoConfig { seed: 1, ..small() };
    assert!(write_demo_dataset(&a.root, &other).unwrap_err().to_string().contains("another configuration"));
    std::fs::write(dir.path().join("c.txt"), "x").unwrap();
    std::fs::create_dir(dir.path().join("c")).unwrap();
    std::fs::write(dir.path().join("c/notes.txt"), "mine").unwrap();
    let e = write_demo_dataset(dir.path().join("c"), &small()).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
    assert_eq!(std::fs::read_to_string(dir.path().join("c/notes.txt")).unwrap(), "mine");
    // Only a folder the generator wrote counts as a demo dataset (of any configuration).
    assert!(data::is_demo_dataset(&a.root));
    assert!(!data::is_demo_dataset(dir.path().join("c")));
    assert!(!data::is_demo_dataset(dir.path().join("absent")));
    // An empty folder is fine; no temporary folder is left behind.
    std::fs::create_dir(dir.path().join("d")).unwrap();
    write_demo_dataset(dir.path().join("d"), &small()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Bad configurations.
    for bad in [
        DemoConfig { classes: 1, ..small() },
        DemoConfig { classes: 9, ..small() },
        DemoConfig { width: 8, ..small() },
        DemoConfig { jpeg_quality: 0, ..small() },
        DemoConfig { train_per_class: 0, ..small() },
    ] {
        assert!(write_demo_dataset(dir.path().join("e"), &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn classes_are_sorted_as_image_folder_sorts_them() {
    let mut sorted = DEMO_CLASSES;
    sorted.sort();
    assert_eq!(sorted, DEMO_CLASSES);
}

/// Mean colour and brightness spread of a picture: what a colour-only classifier sees.
fn colour_features(img: &data::RgbImage) -> [f64; 4] {
    let n = (img.width() * img.height()) as f64;
    let mut f = [0f64; 4];
    for p in img.as_raw().chunks(3) {
        for c in 0..3 {
            f[c] += f64::from(p[c]) / n;
        }
        let l = f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2]);
        f[3] += l * l / n;
    }
    f[3] = (f[3] - (f[0] + f[1] + f[2]).powi(2)).max(0.0).sqrt();
    f
}

#[test]
fn colour_alone_does_not_tell_the_classes_apart() {
    // Nearest class mean on colour statistics stays near chance (1/8), where shape is the cue.
    let (classes, per_class, size) = (8usize, 40usize, 32usize);
    let feats = |split: u64| -> Vec<Vec<[f64; 4]>> {
        (0..classes)
            .map(|c| {
                (0..per_class)
                    .map(|i| {
                        colour_features(&render(
                            c,
                            size,
                            size,
                            &mut Rng::seed(split * 1_000_000 + (c * 1000 + i) as u64),
                        ))
                    })
                    .collect()
            })
            .collect()
    };
    let (train, test) = (feats(1), feats(2));
    let means: Vec<[f64; 4]> = train
        .iter()
        .map(|fs| {
            let mut m = [0.0; 4];
            for f in fs {
                for k in 0..4 {
                    m[k] += f[k] / fs.len() as f64;
                }
            }
            m
        })
        .collect();
    let mut correct = 0;
    for (c, fs) in test.iter().enumerate() {
        for f in fs {
            let d = |m: &[f64; 4]| (0..4).map(|k| (f[k] - m[k]).powi(2)).sum::<f64>();
            let best = (0..classes).min_by(|&a, &b| d(&means[a]).total_cmp(&d(&means[b]))).unwrap();
            correct += usize::from(best == c);
        }
    }
    let acc = correct as f64 / (classes * per_class) as f64;
    assert!(acc < 0.3, "colour statistics classify {:.0}% of the demo pictures", acc * 100.0);
}

#[test]
fn pictures_are_a_pure_function_of_the_generator() {
    for c in 0..DEMO_CLASSES.len() {
        let a = render(c, 33, 21, &mut Rng::seed(c as u64));
        assert_eq!(a, render(c, 33, 21, &mut Rng::seed(c as u64)));
        assert_ne!(a, render(c, 33, 21, &mut Rng::seed(100 + c as u64)));
    }
}

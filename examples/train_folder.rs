//! Trains a ResNet-18 on an ImageFolder (`DIR/train/<class>/*.jpg`, `DIR/val/<class>/*.jpg`)
//! with the `train` crate, one line per epoch, then the per-class report of the best weights;
//! writes the run (weights, checkpoint, `metrics.csv`, `curves.png`, `report.json`,
//! `confusion.png`) into `--out`.
//!
//! ```text
//! cargo run --release --example train_folder -- --data DIR --out DIR --epochs N --image-size S
//! ```
use resnet_rs::train::{Event, FitOutcome, TrainConfig, Trainer};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = TrainConfig { epochs: 5, ..TrainConfig::default() };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => config.data = Some(PathBuf::from(value)),
            "--out" => config.out = PathBuf::from(value),
            "--epochs" => config.epochs = value.parse()?,
            "--image-size" => config.image_size = value.parse()?,
            "--batch-size" => config.batch_size = value.parse()?,
            "--base-planes" => config.base_planes = value.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if config.data.is_none() {
        return Err("usage: train_folder --data DIR --out DIR [--epochs N] [--image-size S]".into());
    }
    // Small pictures: validation resizes to the crop itself rather than torchvision's 256/224.
    config.eval_resize = Some(config.image_size);

    let mut trainer = Trainer::new(config)?;
    trainer.add_callback(|event: &Event| {
        if let Event::EpochEnd { row, .. } = event {
            println!(
                "epoch {}: train loss {:.4}, val loss {:.4}, val acc {:.1}% (top-5 {:.1}%)",
                row.epoch,
                row.train_loss,
                row.val_loss,
                100.0 * row.val_acc,
                100.0 * row.val_top5
            );
        }
    });
    if let FitOutcome::EarlyStopped { epoch } = trainer.fit()? {
        println!("stopped early after epoch {epoch}");
    }
    // scikit-learn's classification_report of the best weights; report.json and confusion.png.
    trainer.restore_best()?;
    if let Some(report) = trainer.class_report()? {
        print!("{}", report.table());
        report.write(&trainer.config().out)?;
    }
    println!("metrics in {}", trainer.config().out.join("metrics.csv").display());
    Ok(())
}

//! # cli-repl
//!
//! The `resnet` command — `train`, `evaluate`, `predict`, `infer`, `export`, `summary`,
//! `convert`, `repl` — the PyTorch tutorial's scripts as one binary, and an interactive REPL in
//! which networks are built and inspected.
//!
//! **What it is not.** No model, kernel or data code lives here: each subcommand parses its
//! arguments, calls the library crates and reports. The REPL is a library
//! (`repl::Session::execute`) with a thin terminal front end, so it is tested without a
//! terminal.
#![deny(missing_docs)]

mod commands;
pub mod error;
pub mod model_io;
pub mod repl;

use clap::{Parser, Subcommand};
use error::CliError;
use std::path::PathBuf;
use std::process::ExitCode;

/// Train, run and inspect ResNets the way PyTorch and torchvision do.
#[derive(Debug, Parser)]
#[command(name = "resnet", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a ResNet on an ImageFolder (default: the built-in demo dataset).
    Train(Box<commands::train::TrainArgs>),
    /// Per-class precision, recall and F1, top-1/top-5 accuracy and a confusion matrix of a model
    /// on a labelled ImageFolder.
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Predict the class of images (files or folders).
    Predict(commands::predict::PredictArgs),
    /// The interactive REPL (reads piped standard input too).
    Repl,
    /// Eval-mode logits of an NCHW f32 .npy batch.
    Infer {
        /// Architecture (needed for files without metadata).
        #[arg(long)]
        arch: Option<String>,
        /// Weights (.pth or .safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Classes of the head (default: from the file).
        #[arg(long)]
        num_classes: Option<usize>,
        /// Stem width for reduced-width models (torchvision: 64).
        #[arg(long)]
        base_planes: Option<usize>,
        /// Input batch, [N, 3, H, W] f32.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the logits.
        #[arg(long)]
        output: PathBuf,
        /// Device: `cpu`, or `wgpu` / `cuda` / `gpu` in a build with the GPU features.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The torchinfo-style summary table of an architecture.
    Summary {
        /// Architecture (resnet18 ... wide_resnet101_2).
        arch: String,
        /// Classes of the head.
        #[arg(long, default_value_t = 1000)]
        num_classes: usize,
        /// Input shape N,3,H,W.
        #[arg(long, default_value = "1,3,224,224")]
        input: String,
        /// Depth of nested modules shown.
        #[arg(long, default_value_t = 3)]
        depth: usize,
    },
    /// Export a model as ONNX (opset 17, batch norm folded): input `input`, output `logits`.
    Export {
        /// Weights (.pth or .safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Architecture (needed only for files without metadata whose layout is ambiguous).
        #[arg(long)]
        arch: Option<String>,
        /// Classes of the head (default: from the file).
        #[arg(long)]
        num_classes: Option<usize>,
        /// Stem width for reduced-width models (torchvision: 64).
        #[arg(long)]
        base_planes: Option<usize>,
        /// `dynamic` (any batch size at run time) or a fixed batch size.
        #[arg(long, default_value = "dynamic", value_parser = commands::export::parse_batch)]
        batch: resnet::OnnxBatch,
        /// Input height and width [default: the crop in the file's metadata, or 224].
        #[arg(long)]
        image_size: Option<usize>,
        /// The ONNX file to write.
        out: PathBuf,
    },
    /// Convert weights between .pth and .safetensors (by OUT's extension).
    Convert {
        /// Input weights.
        input: PathBuf,
        /// Output weights (.pth or .safetensors).
        output: PathBuf,
    },
}

/// Runs the command line `args` (without the program name); returns the exit code.
pub fn run(args: &[String]) -> ExitCode {
    let cli = match Cli::try_parse_from(std::iter::once("resnet".to_string()).chain(args.iter().cloned())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Train(args) => commands::train::run(*args),
        Command::Evaluate(args) => commands::evaluate::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::Repl => {
            // The REPL reports its own errors line by line and decides its exit code.
            let code = repl::run_repl();
            if code == ExitCode::SUCCESS {
                Ok(())
            } else {
                Err(CliError::Usage("the REPL ended with an error".into()))
            }
        }
        Command::Infer { arch, weights, num_classes, base_planes, input, output, device } => {
            let args = model_io::ModelArgs { arch, num_classes, base_planes };
            commands::infer::run(&weights, &args, &input, &output, &device)
        }
        Command::Summary { arch, num_classes, input, depth } => {
            commands::summary::run(&arch, num_classes, &input, depth)
        }
        Command::Convert { input, output } => commands::convert::run(&input, &output),
        Command::Export { weights, arch, num_classes, base_planes, batch, image_size, out } => {
            let args = model_io::ModelArgs { arch, num_classes, base_planes };
            commands::export::run(&weights, &args, batch, image_size, &out)
        }
    }
}

//! `resnet summary ARCH [--num-classes N] [--input 1,3,224,224] [--depth D]`.

use crate::error::{CliError, Result};
use resnet::{Arch, Init};

/// Prints the torchinfo-style table of a zoo architecture.
pub fn run(arch: &str, num_classes: usize, input: &str, depth: usize) -> Result<()> {
    let arch = Arch::from_name(arch)?;
    let shape: Vec<usize> = input
        .split(',')
        .map(|s| s.trim().parse::<usize>().ok().filter(|&v| v > 0))
        .collect::<Option<Vec<_>>>()
        .filter(|s| s.len() == 4 && s[1] == 3)
        .ok_or_else(|| {
            CliError::Usage(format!("--input {input:?}: expected four positive sizes N,3,H,W (e.g. 1,3,224,224)"))
        })?;
    let model = arch.config(num_classes).build(Init::Zeros)?;
    println!("{}", nn::summary(&model, &shape, depth)?);
    Ok(())
}

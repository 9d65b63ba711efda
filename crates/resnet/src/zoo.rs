//! The torchvision model zoo by name: `resnet18` ... `wide_resnet101_2`.

use crate::model::{BlockKind, Init, ResNet, ResNetConfig};
use crate::{ResnetError, Result};

/// The architectures of `torchvision.models` that this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// ResNet-18.
    Resnet18,
    /// ResNet-34.
    Resnet34,
    /// ResNet-50.
    Resnet50,
    /// ResNet-101.
    Resnet101,
    /// ResNet-152.
    Resnet152,
    /// ResNeXt-50 32x4d.
    Resnext50_32x4d,
    /// ResNeXt-101 32x8d.
    Resnext101_32x8d,
    /// ResNeXt-101 64x4d.
    Resnext101_64x4d,
    /// Wide ResNet-50-2.
    WideResnet50_2,
    /// Wide ResNet-101-2.
    WideResnet101_2,
}

impl Arch {
    /// Every architecture, in torchvision's order.
    pub const ALL: [Arch; 10] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50_32x4d,
        Arch::Resnext101_32x8d,
        Arch::Resnext101_64x4d,
        Arch::WideResnet50_2,
        Arch::WideResnet101_2,
    ];

    /// torchvision's function name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::Resnext50_32x4d => "resnext50_32x4d",
            Arch::Resnext101_32x8d => "resnext101_32x8d",
            Arch::Resnext101_64x4d => "resnext101_64x4d",
            Arch::WideResnet50_2 => "wide_resnet50_2",
            Arch::WideResnet101_2 => "wide_resnet101_2",
        }
    }

    /// The architecture of a torchvision name; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Arch> {
        // `ResNet-50`, `resnet_50` and `resnet50` all name resnet50.
        let key = |s: &str| s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        let wanted = key(name);
        Arch::ALL.into_iter().find(|a| key(a.name()) == wanted).ok_or_else(|| ResnetError::UnknownArch {
            name: name.to_string(),
            valid: Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// torchvision's configuration with `num_classes` outputs.
    pub fn config(self, num_classes: usize) -> ResNetConfig {
        use BlockKind::*;
        let (block, layers, groups, wpg) = match self {
            Arch::Resnet18 => (Basic, [2, 2, 2, 2], 1, 64),
            Arch::Resnet34 => (Basic, [3, 4, 6, 3], 1, 64),
            Arch::Resnet50 => (Bottleneck, [3, 4, 6, 3], 1, 64),
            Arch::Resnet101 => (Bottleneck, [3, 4, 23, 3], 1, 64),
            Arch::Resnet152 => (Bottleneck, [3, 8, 36, 3], 1, 64),
            Arch::Resnext50_32x4d => (Bottleneck, [3, 4, 6, 3], 32, 4),
            Arch::Resnext101_32x8d => (Bottleneck, [3, 4, 23, 3], 32, 8),
            Arch::Resnext101_64x4d => (Bottleneck, [3, 4, 23, 3], 64, 4),
            Arch::WideResnet50_2 => (Bottleneck, [3, 4, 6, 3], 1, 128),
            Arch::WideResnet101_2 => (Bottleneck, [3, 4, 23, 3], 1, 128),
        };
        ResNetConfig { groups, width_per_group: wpg, ..ResNetConfig::new(block, layers, num_classes) }
    }

    /// Builds the model with torchvision's initialisation from `seed`.
    pub fn build(self, num_classes: usize, seed: u64) -> Result<ResNet> {
        self.config(num_classes).build(Init::Torchvision(seed))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = ResnetError;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::from_name(s)
    }
}

macro_rules! zoo_fn {
    ($($name:ident => $arch:ident),*) => {$(
        /// torchvision's model of the same name, randomly initialised (seed 0).
        pub fn $name(num_classes: usize) -> Result<ResNet> {
            Arch::$arch.build(num_classes, 0)
        }
    )*};
}

zoo_fn!(
    resnet18 => Resnet18, resnet34 => Resnet34, resnet50 => Resnet50, resnet101 => Resnet101,
    resnet152 => Resnet152, resnext50_32x4d => Resnext50_32x4d, resnext101_32x8d => Resnext101_32x8d,
    resnext101_64x4d => Resnext101_64x4d, wide_resnet50_2 => WideResnet50_2, wide_resnet101_2 => WideResnet101_2
);

//! The torchvision model zoo by name: `resnet18` ... `wide_resnet101_2`.

use crate::model::{BlockKind, Init, ResNet, ResNetConfig};
use crate::weights::StateDict;
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

/// What a state dict's keys and shapes say about the network that wrote it: enough to tell the
/// ten torchvision architectures apart (block counts per stage, bottleneck or not, grouped and
/// widened 3x3s) and to rebuild reduced-width variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `conv3` in the blocks: Bottleneck; otherwise BasicBlock.
    pub block: BlockKind,
    /// Blocks per stage (`layer{k}.{i}` indices).
    pub layers: [usize; 4],
    /// Stem width (`conv1.weight`'s output channels).
    pub base_planes: usize,
    /// Groups of the first block's 3x3 conv (ResNeXt: 32 or 64).
    pub groups: usize,
    /// Output channels of the first block's first conv (bottleneck: the inner width).
    pub inner_width: usize,
    /// Rows of `fc.weight`, when the file has a head.
    pub num_classes: Option<usize>,
}

impl Layout {
    /// Reads the layout off a state dict (after DataParallel's `module.` prefix is stripped).
    pub fn of(sd: &StateDict) -> Result<Layout> {
        let bad = |m: String| ResnetError::Config(m);
        let dim = |key: &str, axis: usize| -> Result<usize> {
            let t = sd.get(key).ok_or_else(|| bad(format!("no {key}: not a torchvision ResNet state dict")))?;
            t.shape()
                .get(axis)
                .copied()
                .filter(|&d| d > 0)
                .ok_or_else(|| bad(format!("{key} has shape {:?}, not a convolution weight", t.shape())))
        };
        let base_planes = dim("conv1.weight", 0)?;
        let mut layers = [0usize; 4];
        for (key, _) in &sd.entries {
            let mut parts = key.split('.');
            let stage = parts.next().and_then(|p| p.strip_prefix("layer")).and_then(|k| k.parse::<usize>().ok());
            let index = parts.next().and_then(|i| i.parse::<usize>().ok());
            if let (Some(k @ 1..=4), Some(i)) = (stage, index) {
                layers[k - 1] = layers[k - 1].max(i + 1);
            }
        }
        if layers.contains(&0) {
            return Err(bad(format!(
                "blocks per stage {layers:?}: a torchvision ResNet has layer1 to layer4, each with at least one block"
            )));
        }
        let block = if sd.get("layer1.0.conv3.weight").is_some() { BlockKind::Bottleneck } else { BlockKind::Basic };
        let inner_width = dim("layer1.0.conv1.weight", 0)?;
        let per_group = dim("layer1.0.conv2.weight", 1)?;
        if inner_width % per_group != 0 {
            return Err(bad(format!(
                "layer1.0.conv2 takes {per_group} channels per group of a {inner_width}-channel input: no whole number of groups"
            )));
        }
        Ok(Layout {
            block,
            layers,
            base_planes,
            groups: inner_width / per_group,
            inner_width,
            num_classes: sd.num_classes(),
        })
    }

    /// The torchvision architecture of this layout, if it is one (at any stem width).
    pub fn arch(&self) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| {
            let c = a.config(1);
            c.block == self.block
                && c.layers == self.layers
                && (self.block == BlockKind::Basic
                    || (c.groups == self.groups && c.inner_width(self.base_planes) == self.inner_width))
        })
    }

    /// The architecture and the configuration that rebuild this layout (the head from
    /// `num_classes`, or none when the file has none), or why no torchvision architecture fits.
    pub fn config(&self) -> Result<(Arch, ResNetConfig)> {
        let arch = self.arch().ok_or_else(|| {
            ResnetError::Config(format!("its layout ({self}) is none of torchvision's architectures"))
        })?;
        let mut config = arch.config(self.num_classes.unwrap_or(0));
        config.base_planes = self.base_planes;
        config.include_top = self.num_classes.is_some();
        Ok((arch, config))
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d] = self.layers;
        match self.block {
            BlockKind::Basic => write!(f, "basic blocks {a}-{b}-{c}-{d}")?,
            BlockKind::Bottleneck => {
                write!(f, "bottleneck blocks {a}-{b}-{c}-{d}, first 3x3 {} wide", self.inner_width)?;
                if self.groups > 1 {
                    write!(f, " in {} groups", self.groups)?;
                }
            }
        }
        write!(f, ", stem {}", self.base_planes)?;
        if let Some(n) = self.num_classes {
            write!(f, ", {n} classes")?;
        }
        Ok(())
    }
}

impl Arch {
    /// The architecture a state dict holds, read off its keys and shapes ([`Layout`]), with the
    /// configuration to rebuild it (stem width and class count included).
    pub fn infer(sd: &StateDict) -> Result<(Arch, ResNetConfig)> {
        Layout::of(sd)?.config()
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

//! BasicBlock, Bottleneck and the ResNet itself, as torchvision builds them: the 7x7/2 stem,
//! BN, ReLU, 3x3/2 max-pool, four stages, adaptive average pool and a linear head. Parameter
//! names are torchvision's (`layer2.0.downsample.1.running_var`), so state dicts move between
//! the two unchanged.

use crate::{ResnetError, Result};
use nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Linear, MaxPool2d, Module, ModuleExt, ShapeRecorder, Var,
};
use tensor::{FanMode, Nonlinearity, Pool2dParams, Rng, Tensor};

/// `conv -> bn (-> + residual) (-> relu)`, as torchvision's blocks compose them. In evaluation
/// without gradients (`no_grad`, the usual inference) it is one pass: the convolution applies
/// the batch norm (its running statistics as a per-channel scale and shift), the residual and
/// the ReLU to each output tile as it writes it (`conv2d_affine`), instead of three more passes
/// over the activations. Whenever autograd records, the modules run one after another. Both
/// give the same values to rounding.
fn conv_bn(conv: &Conv2d, bn: &BatchNorm2d, x: &Var, residual: Option<&Var>, relu: bool) -> nn::Result<Var> {
    let input = x.value();
    if !nn::is_grad_enabled() && !bn.is_training() {
        if let (Some(mean), Some(var)) = (&bn.running_mean, &bn.running_var) {
            let (gamma, beta) = (bn.weight.as_ref().map(Var::value), bn.bias.as_ref().map(Var::value));
            let (scale, mut shift) = tensor::batch_norm_eval_scale_shift(
                gamma.as_ref(),
                beta.as_ref(),
                &mean.value(),
                &var.value(),
                bn.eps,
            )?;
            if let Some(b) = &conv.bias {
                // (conv + b) * scale + shift
                shift = b.value().mul(&scale)?.add(&shift)?;
            }
            let r = residual.map(Var::value);
            let y = tensor::conv2d_affine(&input, &conv.weight.value(), &scale, &shift, conv.params, r.as_ref(), relu)?;
            return Ok(Var::constant(y));
        }
    }
    bn.forward_finish(&conv.forward(x)?, residual, relu)
}

/// The residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convs (expansion 1): ResNet-18/34.
    Basic,
    /// 1x1, 3x3 (with the stride, "v1.5"), 1x1 (expansion 4): ResNet-50 and deeper, ResNeXt.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// How the weights of a new model are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// torchvision's initialisation (kaiming-normal fan-out convs, BN 1/0, default Linear),
    /// from a seeded generator.
    Torchvision(u64),
    /// All zeros: fast, for a model whose weights are loaded right after.
    Zeros,
}

/// Everything that defines a ResNet; `torchvision.models.resnet.ResNet`'s arguments plus the
/// stem width (64 in torchvision; smaller for tests and experiments).
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks per stage (four stages).
    pub layers: [usize; 4],
    /// Classes of the head.
    pub num_classes: usize,
    /// Channel groups of the 3x3 convs (ResNeXt: 32 or 64).
    pub groups: usize,
    /// Width per group (64; ResNeXt 4 or 8; Wide ResNet 128).
    pub width_per_group: usize,
    /// Width of the stem and planes of the first stage (torchvision: 64).
    pub base_planes: usize,
    /// For stages 2-4: replace the stride by dilation (segmentation backbones).
    pub replace_stride_with_dilation: [bool; 3],
    /// Start each block's last BN at zero so residual blocks begin as identities.
    pub zero_init_residual: bool,
    /// With `false`, the model ends at the pooled features (no `fc`).
    pub include_top: bool,
}

impl ResNetConfig {
    /// A torchvision-default configuration for a block type and depths.
    pub fn new(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        ResNetConfig {
            block,
            layers,
            num_classes,
            groups: 1,
            width_per_group: 64,
            base_planes: 64,
            replace_stride_with_dilation: [false; 3],
            zero_init_residual: false,
            include_top: true,
        }
    }

    /// Width of a block's inner convs for `planes` (torchvision: `int(planes * base_width / 64) * groups`).
    pub(crate) fn inner_width(&self, planes: usize) -> usize {
        planes * self.width_per_group / 64 * self.groups
    }

    /// Channels of the pooled features (the head's input).
    pub fn feature_channels(&self) -> usize {
        self.base_planes * 8 * self.block.expansion()
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ResnetError::Config(m));
        if self.layers.contains(&0) {
            return bad(format!("every stage needs at least one block, got {:?}", self.layers));
        }
        if self.groups == 0 || self.width_per_group == 0 || self.base_planes == 0 {
            return bad("groups, width_per_group and base_planes must be positive".into());
        }
        if self.block == BlockKind::Basic && (self.groups != 1 || self.width_per_group != 64) {
            return bad("BasicBlock only supports groups=1 and width_per_group=64 (as in torchvision)".into());
        }
        if self.inner_width(self.base_planes) == 0 {
            return bad(format!(
                "planes {} * width_per_group {} / 64 rounds to zero channels per group",
                self.base_planes, self.width_per_group
            ));
        }
        if self.include_top && self.num_classes == 0 {
            return bad("num_classes must be positive".into());
        }
        Ok(())
    }

    /// Builds the model.
    pub fn build(&self, init: Init) -> Result<ResNet> {
        self.validate()?;
        let mut rng = Rng::seed(match init {
            Init::Torchvision(seed) => seed,
            Init::Zeros => 0,
        });
        let mut b = Builder { init, rng: &mut rng };
        let c = self;
        let conv1 = b.conv(Conv2dConfig::new(3, c.base_planes, 7).stride(2).padding(3).bias(false))?;
        let bn1 = BatchNorm2d::new(c.base_planes);
        let mut inplanes = c.base_planes;
        let mut dilation = 1;
        let mut stages = Vec::new();
        for (i, &blocks) in c.layers.iter().enumerate() {
            let planes = c.base_planes << i;
            let mut stride = if i == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if i > 0 && c.replace_stride_with_dilation[i - 1] {
                dilation *= stride;
                stride = 1;
            }
            let out = planes * c.block.expansion();
            let downsample = if stride != 1 || inplanes != out {
                Some(Downsample {
                    conv: b.conv(Conv2dConfig::new(inplanes, out, 1).stride(stride).bias(false))?,
                    bn: BatchNorm2d::new(out),
                })
            } else {
                None
            };
            let mut stage = Vec::new();
            stage.push(b.block(c, inplanes, planes, stride, downsample, previous_dilation)?);
            inplanes = out;
            for _ in 1..blocks {
                stage.push(b.block(c, inplanes, planes, 1, None, dilation)?);
            }
            stages.push(Stage { blocks: stage });
        }
        let fc = if c.include_top {
            Some(match init {
                Init::Torchvision(_) => Linear::new(c.feature_channels(), c.num_classes, true, b.rng)?,
                Init::Zeros => Linear {
                    weight: Var::parameter(Tensor::zeros(&[c.num_classes, c.feature_channels()])),
                    bias: Some(Var::parameter(Tensor::zeros(&[c.num_classes]))),
                },
            })
        } else {
            None
        };
        let stages: [Stage; 4] = stages.try_into().map_err(|_| ResnetError::Config("four stages".into()))?;
        let model = ResNet {
            config: c.clone(),
            conv1,
            bn1,
            maxpool: MaxPool2d(Pool2dParams::new(3).stride(2).padding(1)),
            stages,
            avgpool: AdaptiveAvgPool2d([1, 1]),
            fc,
        };
        if c.zero_init_residual {
            for stage in &model.stages {
                for block in &stage.blocks {
                    if let Some(w) = &block.last_bn().weight {
                        w.set_value(Tensor::zeros(&w.shape()));
                    }
                }
            }
        }
        Ok(model)
    }
}

struct Builder<'a> {
    init: Init,
    rng: &'a mut Rng,
}

impl Builder<'_> {
    /// A conv with torchvision's ResNet init: kaiming-normal, fan-out, ReLU gain.
    fn conv(&mut self, cfg: Conv2dConfig) -> Result<Conv2d> {
        let conv = cfg.init(self.rng)?;
        let shape = conv.weight.shape();
        conv.weight.set_value(match self.init {
            Init::Torchvision(_) => Tensor::kaiming_normal(&shape, FanMode::FanOut, Nonlinearity::Relu, self.rng)?,
            Init::Zeros => Tensor::zeros(&shape),
        });
        Ok(conv)
    }

    fn block(
        &mut self,
        c: &ResNetConfig,
        inplanes: usize,
        planes: usize,
        stride: usize,
        downsample: Option<Downsample>,
        dilation: usize,
    ) -> Result<Block> {
        Ok(match c.block {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: self.conv(
                    Conv2dConfig::new(inplanes, planes, 3)
                        .stride(stride)
                        .padding(dilation)
                        .dilation(dilation)
                        .bias(false),
                )?,
                bn1: BatchNorm2d::new(planes),
                conv2: self
                    .conv(Conv2dConfig::new(planes, planes, 3).padding(dilation).dilation(dilation).bias(false))?,
                bn2: BatchNorm2d::new(planes),
                downsample,
            }),
            BlockKind::Bottleneck => {
                let width = c.inner_width(planes);
                Block::Bottleneck(Bottleneck {
                    conv1: self.conv(Conv2dConfig::new(inplanes, width, 1).bias(false))?,
                    bn1: BatchNorm2d::new(width),
                    conv2: self.conv(
                        Conv2dConfig::new(width, width, 3)
                            .stride(stride)
                            .padding(dilation)
                            .dilation(dilation)
                            .groups(c.groups)
                            .bias(false),
                    )?,
                    bn2: BatchNorm2d::new(width),
                    conv3: self.conv(Conv2dConfig::new(width, planes * 4, 1).bias(false))?,
                    bn3: BatchNorm2d::new(planes * 4),
                    downsample,
                })
            }
        })
    }
}

/// `Sequential(conv1x1(stride), BatchNorm2d)` on the identity path of a block.
pub struct Downsample {
    /// The 1x1 conv (key `downsample.0`).
    pub conv: Conv2d,
    /// The BN (key `downsample.1`).
    pub bn: BatchNorm2d,
}

impl Module for Downsample {
    fn type_name(&self) -> &'static str {
        "Sequential"
    }
    fn forward(&self, x: &Var) -> nn::Result<Var> {
        conv_bn(&self.conv, &self.bn, x, None, false)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("0".into(), &self.conv as &dyn Module), ("1".into(), &self.bn)]
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> nn::Result<Vec<usize>> {
        let s = rec.child("0", &self.conv, input)?;
        rec.child("1", &self.bn, &s)
    }
}

/// Two 3x3 convs with a residual connection (torchvision's `BasicBlock`).
pub struct BasicBlock {
    /// 3x3, carries the stride.
    pub conv1: Conv2d,
    /// After conv1.
    pub bn1: BatchNorm2d,
    /// 3x3.
    pub conv2: Conv2d,
    /// After conv2 (zeroed by `zero_init_residual`).
    pub bn2: BatchNorm2d,
    /// The identity path when the shape changes.
    pub downsample: Option<Downsample>,
}

/// 1x1 reduce, 3x3 (stride, groups), 1x1 expand, with a residual connection.
pub struct Bottleneck {
    /// 1x1 to the inner width.
    pub conv1: Conv2d,
    /// After conv1.
    pub bn1: BatchNorm2d,
    /// 3x3, carries the stride and the groups.
    pub conv2: Conv2d,
    /// After conv2.
    pub bn2: BatchNorm2d,
    /// 1x1 to `planes * 4`.
    pub conv3: Conv2d,
    /// After conv3 (zeroed by `zero_init_residual`).
    pub bn3: BatchNorm2d,
    /// The identity path when the shape changes.
    pub downsample: Option<Downsample>,
}

/// One residual block of either kind.
// A model holds a few dozen blocks, built once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Block {
    /// A BasicBlock.
    Basic(BasicBlock),
    /// A Bottleneck.
    Bottleneck(Bottleneck),
}

impl Block {
    /// The convs and BNs along the main path, in order (conv1/bn1, conv2/bn2[, conv3/bn3]).
    pub fn main_path(&self) -> Vec<(&Conv2d, &BatchNorm2d)> {
        match self {
            Block::Basic(b) => vec![(&b.conv1, &b.bn1), (&b.conv2, &b.bn2)],
            Block::Bottleneck(b) => vec![(&b.conv1, &b.bn1), (&b.conv2, &b.bn2), (&b.conv3, &b.bn3)],
        }
    }

    /// The identity path's conv and BN, if any.
    pub fn downsample(&self) -> Option<&Downsample> {
        match self {
            Block::Basic(b) => b.downsample.as_ref(),
            Block::Bottleneck(b) => b.downsample.as_ref(),
        }
    }

    fn last_bn(&self) -> &BatchNorm2d {
        match self {
            Block::Basic(b) => &b.bn2,
            Block::Bottleneck(b) => &b.bn3,
        }
    }
}

impl Module for Block {
    fn type_name(&self) -> &'static str {
        match self {
            Block::Basic(_) => "BasicBlock",
            Block::Bottleneck(_) => "Bottleneck",
        }
    }
    fn forward(&self, x: &Var) -> nn::Result<Var> {
        let path = self.main_path();
        let identity = match self.downsample() {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        let mut out = x.clone();
        for (i, (conv, bn)) in path.iter().enumerate() {
            // The last conv adds the identity before its ReLU.
            let residual = (i + 1 == path.len()).then_some(&identity);
            out = conv_bn(conv, bn, &out, residual, true)?;
        }
        Ok(out)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = Vec::new();
        for (i, (conv, bn)) in self.main_path().into_iter().enumerate() {
            v.push((format!("conv{}", i + 1), conv));
            v.push((format!("bn{}", i + 1), bn));
        }
        if let Some(d) = self.downsample() {
            v.push(("downsample".into(), d));
        }
        v
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> nn::Result<Vec<usize>> {
        let mut s = input.to_vec();
        for (i, (conv, bn)) in self.main_path().into_iter().enumerate() {
            s = rec.child(&format!("conv{}", i + 1), conv, &s)?;
            s = rec.child(&format!("bn{}", i + 1), bn, &s)?;
        }
        let identity = match self.downsample() {
            Some(d) => rec.child("downsample", d, input)?,
            None => input.to_vec(),
        };
        if identity != s {
            return Err(nn::NnError::Shape(format!("residual shapes differ: {s:?} vs {identity:?}")));
        }
        Ok(s)
    }
}

/// A stage: blocks in sequence (torchvision's `layerN`, a `Sequential`).
pub struct Stage {
    /// The blocks (keys `layerN.0`, `layerN.1`, ...).
    pub blocks: Vec<Block>,
}

impl Module for Stage {
    fn type_name(&self) -> &'static str {
        "Sequential"
    }
    fn forward(&self, x: &Var) -> nn::Result<Var> {
        self.blocks.iter().try_fold(x.clone(), |h, b| b.forward(&h))
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.blocks.iter().enumerate().map(|(i, b)| (i.to_string(), b as &dyn Module)).collect()
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> nn::Result<Vec<usize>> {
        let mut s = input.to_vec();
        for (i, b) in self.blocks.iter().enumerate() {
            s = rec.child(&i.to_string(), b, &s)?;
        }
        Ok(s)
    }
}

/// A ResNet / ResNeXt / Wide ResNet.
pub struct ResNet {
    /// How it was built.
    pub config: ResNetConfig,
    /// The 7x7/2 stem conv.
    pub conv1: Conv2d,
    /// The stem BN.
    pub bn1: BatchNorm2d,
    /// 3x3/2 max-pool.
    pub maxpool: MaxPool2d,
    /// `layer1` .. `layer4`.
    pub stages: [Stage; 4],
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// The classifier head (absent without the top).
    pub fc: Option<Linear>,
}

impl ResNet {
    /// Pooled features `[batch, feature_channels]` (the model without its head).
    pub fn features(&self, x: &Var) -> nn::Result<Var> {
        self.avgpool.forward(&self.feature_map(x)?)?.flatten_from(1)
    }

    /// The last stage's output (`layer4`), `[batch, feature_channels, h, w]`: the feature map
    /// before the global pool (what Grad-CAM explains).
    pub fn feature_map(&self, x: &Var) -> nn::Result<Var> {
        let h = self.maxpool.forward(&conv_bn(&self.conv1, &self.bn1, x, None, true)?)?;
        self.stages.iter().try_fold(h, |h, s| s.forward(&h))
    }

    /// Replaces the head with a freshly initialised one for `num_classes` (transfer learning).
    pub fn reset_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        if num_classes == 0 {
            return Err(ResnetError::Config("num_classes must be positive".into()));
        }
        self.fc = Some(Linear::new(self.config.feature_channels(), num_classes, true, &mut Rng::seed(seed))?);
        self.config.num_classes = num_classes;
        self.config.include_top = true;
        Ok(())
    }

    /// Freezes everything but the head (`for p in net.parameters(): p.requires_grad = False`
    /// followed by a new `fc`).
    pub fn freeze_backbone(&self) {
        self.freeze();
        if let Some(fc) = &self.fc {
            fc.unfreeze();
        }
    }
}

const STAGE_NAMES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];

impl Module for ResNet {
    fn type_name(&self) -> &'static str {
        "ResNet"
    }
    fn forward(&self, x: &Var) -> nn::Result<Var> {
        let f = self.features(x)?;
        match &self.fc {
            Some(fc) => fc.forward(&f),
            None => Ok(f),
        }
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("relu".into(), &nn::ReLU),
            ("maxpool".into(), &self.maxpool),
        ];
        for (name, s) in STAGE_NAMES.iter().zip(&self.stages) {
            v.push((name.to_string(), s));
        }
        v.push(("avgpool".into(), &self.avgpool));
        if let Some(fc) = &self.fc {
            v.push(("fc".into(), fc));
        }
        v
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> nn::Result<Vec<usize>> {
        let s = rec.child("conv1", &self.conv1, input)?;
        let s = rec.child("bn1", &self.bn1, &s)?;
        let s = rec.child("relu", &nn::ReLU, &s)?;
        let mut s = rec.child("maxpool", &self.maxpool, &s)?;
        for (name, stage) in STAGE_NAMES.iter().zip(&self.stages) {
            s = rec.child(name, stage, &s)?;
        }
        let s = rec.child("avgpool", &self.avgpool, &s)?;
        let flat = vec![s[0], s[1] * s[2] * s[3]];
        match &self.fc {
            Some(fc) => rec.child("fc", fc, &flat),
            None => Ok(flat),
        }
    }
}

//! The zoo: torchvision's parameter counts for every architecture, the summary, names,
//! initialisation, and the builder's options.

mod common;
use nn::{Module, ModuleExt, Var};
use resnet::*;
use tensor::{Rng, Tensor};

#[test]
fn parameter_counts_equal_torchvision() {
    // torchvision 0.14: sum(p.numel() for p in model.parameters()) at 1000 classes.
    let expected = [
        (Arch::Resnet18, 11_689_512),
        (Arch::Resnet34, 21_797_672),
        (Arch::Resnet50, 25_557_032),
        (Arch::Resnet101, 44_549_160),
        (Arch::Resnet152, 60_192_808),
        (Arch::Resnext50_32x4d, 25_028_904),
        (Arch::Resnext101_32x8d, 88_791_336),
        (Arch::Resnext101_64x4d, 83_455_272),
        (Arch::WideResnet50_2, 68_883_240),
        (Arch::WideResnet101_2, 126_886_696),
    ];
    for (arch, count) in expected {
        let model = arch.config(1000).build(Init::Zeros).unwrap();
        assert_eq!(model.parameter_counts(), (count, count), "{arch}");
    }
}

#[test]
fn resnet50_summary_matches_torchinfo_totals() {
    let model = Arch::Resnet50.config(1000).build(Init::Zeros).unwrap();
    let table = nn::summary(&model, &[1, 3, 224, 224], 3).unwrap();
    assert!(table.contains("Total params: 25,557,032"), "{table}");
    assert!(table.contains("Total mult-adds (G): 4.09"), "{table}");
    assert!(table.contains("├─Sequential: 1-5"), "{table}");
    assert!(table.contains("│    └─Bottleneck: 2-1"), "{table}");
    let (out, _) = model.output_shape(&[2, 3, 224, 224]).unwrap();
    assert_eq!(out, vec![2, 1000]);
}

#[test]
fn state_dict_keys_are_torchvisions() {
    let model = Arch::Resnet50.config(1000).build(Init::Zeros).unwrap();
    let keys: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(keys.iter().any(|x| x == k), "missing {k}");
    }
    assert_eq!(keys.len(), 320, "torchvision's resnet50 state dict has 320 entries");
    let w = model.named_parameters().into_iter().find(|(k, _)| k == "layer2.0.conv2.weight").unwrap().1;
    assert_eq!(w.shape(), vec![128, 128, 3, 3], "stride on the 3x3 conv (v1.5)");
    let rx = Arch::Resnext50_32x4d.config(10).build(Init::Zeros).unwrap();
    let w = rx.named_parameters().into_iter().find(|(k, _)| k == "layer1.0.conv2.weight").unwrap().1;
    assert_eq!(w.shape(), vec![128, 4, 3, 3], "width = planes * 4 / 64 * 32 groups");
}

#[test]
fn torchvision_initialisation() {
    let model = Arch::Resnet18.build(10, 1).unwrap();
    let w = model.layer_weight("layer3.0.conv1.weight");
    // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (256 * 9)).
    let v = w.to_vec_f32().unwrap();
    let std = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    assert!((std / (2.0f64 / (256.0 * 9.0)).sqrt() - 1.0).abs() < 0.05, "std {std}");
    assert!(model.layer_weight("bn1.weight").to_vec_f32().unwrap().iter().all(|&x| x == 1.0));
    assert!(model.layer_weight("bn1.bias").to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
    let zero =
        ResNetConfig { zero_init_residual: true, ..Arch::Resnet18.config(10) }.build(Init::Torchvision(1)).unwrap();
    assert!(zero.layer_weight("layer1.0.bn2.weight").to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
    assert!(zero.layer_weight("layer1.0.bn1.weight").to_vec_f32().unwrap().iter().all(|&x| x == 1.0));
    let zero50 = ResNetConfig { zero_init_residual: true, ..Arch::Resnet50.config(10) }.build(Init::Zeros).unwrap();
    assert!(zero50.layer_weight("layer2.1.bn3.weight").to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
}

trait Lookup {
    fn layer_weight(&self, key: &str) -> Tensor;
}

impl Lookup for ResNet {
    fn layer_weight(&self, key: &str) -> Tensor {
        self.state_dict().into_iter().find(|(k, _)| k == key).unwrap().1
    }
}

#[test]
fn names_builder_and_options() {
    assert_eq!(Arch::from_name("ResNet-50").unwrap(), Arch::Resnet50);
    let e = Arch::from_name("resnet51").unwrap_err().to_string();
    assert!(e.contains("resnet51") && e.contains("resnext101_64x4d"), "{e}");
    let bad = ResNetConfig { groups: 2, ..Arch::Resnet18.config(10) }.build(Init::Zeros);
    assert!(bad.is_err(), "BasicBlock with groups");
    assert!(ResNetConfig { layers: [2, 0, 2, 2], ..Arch::Resnet18.config(10) }.build(Init::Zeros).is_err());
    // A custom depth and width, as the REPL builds them.
    let custom = ResNetConfig { base_planes: 8, ..ResNetConfig::new(BlockKind::Bottleneck, [1, 1, 1, 1], 3) };
    let net = custom.build(Init::Torchvision(0)).unwrap();
    let x = Var::constant(Tensor::randn(&[2, 3, 32, 32], &mut Rng::seed(0)));
    assert_eq!(net.forward(&x).unwrap().shape(), vec![2, 3]);
    // Without the top: pooled features.
    let headless = ResNetConfig { include_top: false, ..Arch::Resnet18.config(10) }.build(Init::Zeros).unwrap();
    assert_eq!(headless.forward(&x).unwrap().shape(), vec![2, 512]);
    // Dilation keeps the spatial size of the last stages.
    let dilated = ResNetConfig { replace_stride_with_dilation: [false, true, true], ..custom.clone() }
        .build(Init::Zeros)
        .unwrap();
    let (s, _) = dilated.output_shape(&[1, 3, 64, 64]).unwrap();
    assert_eq!(s, vec![1, 3]);
}

#[test]
fn transfer_learning_keeps_the_backbone_and_reinitialises_the_head() {
    let source = Arch::Resnet18.build(1000, 3).unwrap();
    let sd = StateDict { entries: source.state_dict(), metadata: Default::default() };
    let mut target = Arch::Resnet18.build(1000, 4).unwrap();
    target.reset_head(5, 9).unwrap();
    let report = load_pretrained(&target, &sd).unwrap();
    let skipped: Vec<&str> = report.mismatched.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(skipped, ["fc.weight", "fc.bias"]);
    assert_eq!(target.state_dict()[0].1.to_vec_f32().unwrap(), sd.entries[0].1.to_vec_f32().unwrap());
    target.freeze_backbone();
    assert_eq!(target.parameter_counts(), (11_689_512 - 513_000 + 2_565, 2_565));
    assert_eq!(target.trainable_parameters().len(), 2);
    // A mismatch in the backbone is an error naming the key and both shapes.
    let other = Arch::Resnet34.build(5, 0).unwrap();
    let e = load_pretrained(&other, &sd).unwrap_err().to_string();
    assert!(e.contains("layer1.2.conv1.weight") || e.contains("missing keys"), "{e}");
    let wide = ResNetConfig { base_planes: 32, ..Arch::Resnet18.config(5) }.build(Init::Zeros).unwrap();
    let e = load_strict(&wide, &sd).unwrap_err().to_string();
    assert!(
        e.contains("size mismatch for conv1.weight: the model has [32, 3, 7, 7], the state dict [64, 3, 7, 7]"),
        "{e}"
    );
}

#[test]
fn the_architecture_is_read_off_the_state_dict() {
    // Full width: every torchvision architecture is told apart by its keys and shapes alone.
    for arch in Arch::ALL {
        let model = arch.config(7).build(Init::Zeros).unwrap();
        let sd = StateDict { entries: model.state_dict(), metadata: Default::default() };
        drop(model);
        let layout = Layout::of(&sd).unwrap();
        assert_eq!(layout.arch(), Some(arch), "{arch}: {layout}");
        let (inferred, config) = Arch::infer(&sd).unwrap();
        assert_eq!((inferred, config.num_classes, config.base_planes), (arch, 7, 64), "{arch}");
        assert_eq!(config, arch.config(7), "{arch}");
    }
    // Reduced widths (the PyTorch fixtures): the stem width comes along; the plain and wide
    // bottlenecks are told apart by the width of their 3x3s relative to the stem.
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2"] {
        let sd = read_weights(common::fixture_path(&format!("{name}.safetensors"))).unwrap();
        let (arch, config) = Arch::infer(&sd).unwrap();
        assert_eq!(arch.name(), name);
        let want = common::reduced(name);
        assert_eq!((config.base_planes, config.num_classes), (want.base_planes, want.num_classes), "{name}");
        let model = config.build(Init::Zeros).unwrap();
        load_strict(&model, &sd).unwrap();
    }
    // The fixtures' reduced ResNeXts use 4 or 2 groups, which no torchvision model has.
    let sd = read_weights(common::fixture_path("resnext50_32x4d.safetensors")).unwrap();
    let e = Arch::infer(&sd).unwrap_err().to_string();
    assert!(e.contains("is none of torchvision's architectures") && e.contains("in 4 groups"), "{e}");
    // A headless file: the configuration has no head.
    let model = Arch::Resnet18.config(3).build(Init::Zeros).unwrap();
    let entries = model.state_dict().into_iter().filter(|(k, _)| !k.starts_with("fc.")).collect();
    let (arch, config) = Arch::infer(&StateDict { entries, metadata: Default::default() }).unwrap();
    assert_eq!((arch, config.include_top), (Arch::Resnet18, false));
    // Not a ResNet at all.
    let sd = StateDict { entries: vec![("w".into(), Tensor::zeros(&[2, 2]))], metadata: Default::default() };
    assert!(Layout::of(&sd).unwrap_err().to_string().contains("no conv1.weight"));
}

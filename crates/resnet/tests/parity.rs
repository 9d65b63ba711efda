//! Every zoo architecture (at reduced width) against torchvision: eval-mode logits from
//! safetensors, zip and legacy `.pth`, wrapped checkpoints and f16/bf16/f64 files; the fused
//! inference path; one training step; and the full-width check as an ignored test.

mod common;
use common::*;
use nn::{Method, Module, ModuleExt, Optimizer, Var};
use resnet::*;
use tensor::Tensor;

fn logits(model: &ResNet, x: &Tensor) -> Tensor {
    model.eval();
    nn::with_no_grad(|| model.forward(&Var::constant(x.clone()))).unwrap().value()
}

fn load(name: &str, file: &str) -> ResNet {
    let model = reduced(name).build(Init::Zeros).unwrap();
    let sd = read_weights(fixture_path(file)).unwrap();
    load_strict(&model, &sd).unwrap();
    model
}

#[test]
fn every_architecture_matches_torchvision_from_safetensors() {
    let x = npy("input");
    for name in REDUCED {
        let model = load(name, &format!("{name}.safetensors"));
        let want = npy(&format!("{name}_logits"));
        assert_close(&format!("{name} logits"), &logits(&model, &x), &want, 1e-4);
        let plain = logits(&model, &x);
        let fused = FusedResNet::new(&model).unwrap().forward(&x).unwrap();
        assert_close(&format!("{name} fused logits"), &fused, &want, 1e-4);
        // Folding BN into the conv changes only the rounding: fused and plain eval agree to 1e-5.
        assert_close(&format!("{name} fused vs plain"), &fused, &plain, 1e-5);
        // With gradients on, each module runs by itself (autograd records them); without, each
        // conv applies its batch norm, residual and ReLU as it writes: the same values.
        let recorded = model.forward(&Var::constant(x.clone())).unwrap().value();
        assert_close(&format!("{name} recorded vs no-grad"), &recorded, &plain, 1e-5);
    }
}

/// A 128x128 input gives the first stages enough 4x4 output tiles for the Winograd path of the
/// 3x3 convs (fixture: `gen_resnet_fixtures.py --larger-input`), in the plain eval forward and
/// in the fused one (with its cached transformed weights, used twice).
#[test]
fn winograd_convs_match_torchvision_inside_a_model() {
    let x = npy("larger_input");
    let want = npy("resnet18_larger_logits");
    let model = load("resnet18", "resnet18.safetensors");
    assert_close("resnet18 128x128 logits", &logits(&model, &x), &want, 1e-4);
    let fused = FusedResNet::new(&model).unwrap();
    for run in 0..2 {
        assert_close(&format!("resnet18 128x128 fused, run {run}"), &fused.forward(&x).unwrap(), &want, 1e-4);
    }
}

#[test]
fn pth_zip_legacy_and_wrapped_checkpoints_load() {
    let x = npy("input");
    let want18 = npy("resnet18_logits");
    for file in [
        "resnet18.pth",
        "resnet18_legacy.pth",
        "resnet18_checkpoint.pth",
        "resnet18_model_legacy.pth",
        "resnet18_no_nbt.pth",
        "resnet18_f64.pth",
    ] {
        let model = load("resnet18", file);
        assert_close(file, &logits(&model, &x), &want18, 1e-4);
    }
    for tag in ["f16", "bf16"] {
        let model = load("resnet18", &format!("resnet18_{tag}.pth"));
        assert_close(tag, &logits(&model, &x), &npy(&format!("resnet18_{tag}_logits")), 1e-4);
    }
    let model = load("resnext50_32x4d", "resnext50_32x4d.pth");
    assert_close("resnext50 .pth", &logits(&model, &x), &npy("resnext50_32x4d_logits"), 1e-4);
    // The legacy file and the zip file hold the same tensors.
    let a = read_weights(fixture_path("resnet18.pth")).unwrap();
    let b = read_weights(fixture_path("resnet18_legacy.pth")).unwrap();
    assert_eq!(a.entries.len(), b.entries.len());
    for ((ka, ta), (kb, tb)) in a.entries.iter().zip(&b.entries) {
        assert_eq!(ka, kb);
        assert_eq!(ta.shape(), tb.shape());
        assert_eq!(format!("{ta:?}"), format!("{tb:?}"));
    }
    assert_eq!(a.get("bn1.num_batches_tracked").unwrap().dtype(), tensor::DType::I64);
}

#[test]
fn pth_to_safetensors_round_trip_is_identical() {
    let sd = read_weights(fixture_path("resnet18.pth")).unwrap();
    let out = std::env::temp_dir().join(format!("roundtrip-{}.safetensors", std::process::id()));
    let meta = [("arch".to_string(), "resnet18".to_string())].into_iter().collect();
    write_safetensors(&out, &sd.entries, &meta).unwrap();
    let back = read_weights(&out).unwrap();
    assert_eq!(back.metadata.get("arch").map(String::as_str), Some("resnet18"));
    assert_eq!(back.entries.len(), sd.entries.len());
    for (k1, t1) in &sd.entries {
        let t2 = back.get(k1).unwrap();
        assert_eq!(t1.dtype(), t2.dtype());
        assert_eq!(t1.shape(), t2.shape());
        match t1.dtype() {
            tensor::DType::F32 => assert_eq!(t1.to_vec_f32().unwrap(), t2.to_vec_f32().unwrap(), "{k1}"),
            tensor::DType::I64 => assert_eq!(t1.to_vec_i64().unwrap(), t2.to_vec_i64().unwrap(), "{k1}"),
        }
    }
    std::fs::remove_file(out).unwrap();
}

#[test]
fn our_pth_files_read_back_identically() {
    let sd = read_weights(fixture_path("resnet18.pth")).unwrap();
    let out = std::env::temp_dir().join(format!("ours-{}.pth", std::process::id()));
    write_pth(&out, &sd.entries).unwrap();
    let back = read_weights(&out).unwrap();
    assert_eq!(back.entries.len(), sd.entries.len());
    for ((k1, t1), (k2, t2)) in sd.entries.iter().zip(&back.entries) {
        assert_eq!(k1, k2, "file order is kept");
        assert_eq!(format!("{t1:?}"), format!("{t2:?}"));
        assert_eq!(t1.dtype(), t2.dtype());
        if t1.dtype() == tensor::DType::F32 {
            assert_eq!(t1.to_vec_f32().unwrap(), t2.to_vec_f32().unwrap(), "{k1}");
        }
    }
    std::fs::remove_file(out).unwrap();
}

#[test]
fn one_training_step_matches_torch() {
    let model = load("resnet18", "resnet18.safetensors");
    model.train();
    let x = Var::constant(npy("train_x"));
    let y = npy("train_y");
    let mut opt = Optimizer::new(Method::adam(), model.trainable_parameters(), 1e-3, 0.0).unwrap();
    opt.zero_grad();
    let loss = nn::CrossEntropyLoss::default().forward(&model.forward(&x).unwrap(), &y).unwrap();
    assert_close("loss", &loss.value().reshape(&[1]).unwrap(), &npy("train_loss"), 1e-4);
    loss.backward().unwrap();
    opt.step().unwrap();
    let after = read_weights(fixture_path("train_after.safetensors")).unwrap();
    for (k, t) in model.state_dict() {
        let want = after.get(&k).unwrap();
        match t.dtype() {
            tensor::DType::I64 => assert_eq!(t.to_vec_i64().unwrap(), want.to_vec_i64().unwrap(), "{k}"),
            // Adam's first step moves every weight by about lr = 1e-3: parameters are compared
            // within 1e-4 relative to their scale, which is far below one step.
            tensor::DType::F32 => assert_close(&k, &t, want, 1e-4),
        }
    }
}

/// Full-width ResNet-50 and ResNeXt-50 (every layer at its real channel count, so the grouped
/// direct kernel, Winograd at 256 and 512 channels and the wide 1x1 GEMMs all run) with seeded
/// random weights and random batch-norm statistics (so folding them is not an identity): the
/// fused inference path gives the plain eval forward's logits to 1e-4. The torchvision
/// comparison of full-width files is the ignored test below.
#[test]
fn full_width_fused_inference_matches_the_plain_forward() {
    let x = Tensor::randn(&[2, 3, 96, 96], &mut tensor::Rng::seed(40));
    for (arch, seed) in [(Arch::Resnet50, 41u64), (Arch::Resnext50_32x4d, 42)] {
        let model = arch.build(100, seed).unwrap();
        let mut rng = tensor::Rng::seed(seed + 100);
        let entries: Vec<(String, Tensor)> = model
            .state_dict()
            .into_iter()
            .map(|(k, t)| {
                let is_bn = k.starts_with("bn") || k.contains(".bn") || k.contains("downsample.1");
                let field = k.rsplit('.').next().unwrap_or_default();
                let t = match (is_bn, field) {
                    (true, "weight" | "running_var") => Tensor::uniform(t.shape(), 0.5, 1.5, &mut rng),
                    (true, "bias" | "running_mean") => Tensor::uniform(t.shape(), -0.2, 0.2, &mut rng),
                    _ => t,
                };
                (k, t)
            })
            .collect();
        model.load_state_dict(&entries, true).unwrap();
        let plain = logits(&model, &x);
        let fused = FusedResNet::new(&model).unwrap().forward(&x).unwrap();
        assert_close(arch.name(), &fused, &plain, 1e-4);
        let spread = plain.to_vec_f32().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-2 && spread.is_finite(), "{arch}: degenerate logits (max |y| = {spread})");
    }
}

/// Full-width models against torchvision. Generate the files first (about 1.5 GB):
/// `/usr/bin/python3 crates/resnet/tests/fixtures/gen_resnet_fixtures.py --full DIR`, then
/// `RESNET_FULL_FIXTURES=DIR cargo test -p resnet --profile ci --test parity -- --ignored`.
#[test]
#[ignore = "needs full-size fixtures generated with PyTorch (see the doc comment)"]
fn full_width_zoo_matches_torchvision() {
    let dir = std::path::PathBuf::from(std::env::var("RESNET_FULL_FIXTURES").expect("set RESNET_FULL_FIXTURES"));
    let x = tensor::read_npy(dir.join("input.npy")).unwrap();
    for arch in Arch::ALL {
        let model = arch.config(1000).build(Init::Zeros).unwrap();
        load_strict(&model, &read_weights(dir.join(format!("{arch}.pth"))).unwrap()).unwrap();
        let want = tensor::read_npy(dir.join(format!("{arch}_logits.npy"))).unwrap();
        assert_close(arch.name(), &logits(&model, &x), &want, 1e-4);
        assert_close(arch.name(), &FusedResNet::new(&model).unwrap().forward(&x).unwrap(), &want, 1e-4);
        eprintln!("{arch}: ok");
    }
}

/// Files as PyTorch 0.3 / 0.4 wrote them under Python 2 (`fixtures/gen_py2_pth.py` assembles
/// them opcode by opcode; `py2_resnet18_expected.pth` is what torch.load returned for them):
/// BINSTRING keys, `_rebuild_tensor` v1, OrderedDict from pairs, `torch.cuda.FloatStorage` at
/// `cuda:0`, a DataParallel checkpoint. Every tensor equals torch.load's, and the files name no
/// architecture, yet their keys tell it.
#[test]
fn python2_era_pth_files_load_as_torch_load_reads_them() {
    let py2 = |name: &str| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/py2").join(name);
    let want = read_weights(py2("py2_resnet18_expected.pth")).unwrap();
    assert_eq!(want.entries.len(), 122);
    for (file, skips_nbt) in [("py2_resnet18_v03.pth", true), ("py2_checkpoint_v04.pth", false)] {
        let got = read_weights(py2(file)).unwrap();
        let expected: Vec<&(String, Tensor)> =
            want.entries.iter().filter(|(k, _)| !(skips_nbt && k.ends_with("num_batches_tracked"))).collect();
        assert_eq!(got.entries.len(), expected.len(), "{file}");
        for ((k, t), (wk, wt)) in got.entries.iter().zip(expected) {
            assert_eq!(k, wk, "{file}: file order is kept");
            assert_eq!((t.dtype(), t.shape()), (wt.dtype(), wt.shape()), "{file}: {k}");
            match t.dtype() {
                tensor::DType::F32 => assert_eq!(t.to_vec_f32().unwrap(), wt.to_vec_f32().unwrap(), "{file}: {k}"),
                tensor::DType::I64 => assert_eq!(t.to_vec_i64().unwrap(), wt.to_vec_i64().unwrap(), "{file}: {k}"),
            }
        }
        let (arch, config) = Arch::infer(&got).unwrap();
        assert_eq!((arch, config.base_planes, config.num_classes), (Arch::Resnet18, 4, 10), "{file}");
        let model = config.build(Init::Zeros).unwrap();
        load_pretrained(&model, &got).unwrap();
    }
}

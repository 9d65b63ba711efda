//! ONNX export: the exported graph, run by tract (a pure-Rust ONNX runtime), gives our own
//! eval-mode logits to 1e-4 relative, for a narrow ResNet-18 and a ResNeXt with a dynamic batch,
//! a fixed batch and symbolic image sizes; the file's declared interface is checked too.

use nn::{Module, ModuleExt, Var};
use onnx_protobuf::Message;
use resnet::{Arch, OnnxBatch, OnnxInput, ResNet, ResNetConfig};
use tensor::{Rng, Tensor};

/// A model with random weights and random batch-norm statistics (so folding is not an identity).
fn model(config: ResNetConfig, seed: u64) -> ResNet {
    let m = config.build(resnet::Init::Torchvision(seed)).unwrap();
    let mut rng = Rng::seed(seed + 1);
    for (name, buffer) in m.named_buffers() {
        let shape = buffer.value().shape().to_vec();
        if name.ends_with("running_mean") {
            buffer.set_value(Tensor::randn(&shape, &mut rng).mul_scalar(0.1).unwrap());
        } else if name.ends_with("running_var") {
            buffer.set_value(Tensor::rand(&shape, &mut rng).add_scalar(0.5).unwrap());
        }
    }
    m.eval();
    m
}

fn our_logits(m: &ResNet, x: &Tensor) -> Vec<f32> {
    nn::with_no_grad(|| m.forward(&Var::constant(x.clone()))).unwrap().value().to_vec_f32().unwrap()
}

/// Runs the ONNX bytes on `x` with tract.
fn tract_logits(bytes: &[u8], x: &Tensor) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let shape = x.shape().to_vec();
    let input = tract_onnx::prelude::Tensor::from_shape(&shape, &x.to_vec_f32().unwrap()).unwrap();
    let runnable = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact(&shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = runnable.run(tvec!(input.into_tvalue())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err <= 1e-4, "{what}: max relative error {err:e}");
}

#[test]
fn exported_resnet18_and_resnext_run_in_tract_with_our_logits() {
    let mut r18 = Arch::Resnet18.config(7);
    r18.base_planes = 8;
    let mut rx = Arch::Resnext50_32x4d.config(5);
    rx.base_planes = 4;
    rx.groups = 4;
    rx.width_per_group = 32;
    for (name, config) in [("resnet18 width 8", r18), ("resnext50 width 4, 4 groups of 8", rx)] {
        let m = model(config, 11);
        for (input, batch) in [
            (OnnxInput { batch: OnnxBatch::Dynamic, size: Some((64, 64)) }, 3),
            (OnnxInput { batch: OnnxBatch::Fixed(2), size: Some((64, 64)) }, 2),
            (OnnxInput { batch: OnnxBatch::Dynamic, size: None }, 1),
        ] {
            let (h, w) = input.size.unwrap_or((48, 56));
            let x = Tensor::randn(&[batch, 3, h, w], &mut Rng::seed(3));
            let bytes = resnet::onnx_bytes(&m, input).unwrap();
            assert_close(&tract_logits(&bytes, &x), &our_logits(&m, &x), &format!("{name}, {input:?}"));
        }
    }
}

#[test]
fn the_file_declares_opset_17_input_and_logits_and_only_inference_ops() {
    let mut c = Arch::Resnet50.config(10);
    c.base_planes = 4;
    let path = std::env::temp_dir().join(format!("resnet-onnx-{}.onnx", std::process::id()));
    resnet::export_onnx(&model(c, 2), OnnxInput::default(), &path).unwrap();
    let proto = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(proto.opset_import[0].version, 17);
    let graph = proto.graph.as_ref().unwrap();
    assert_eq!(graph.input.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["input"]);
    assert_eq!(graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["logits"]);
    let dims = &graph.input[0].type_.tensor_type().shape.dim;
    assert_eq!(dims[0].dim_param(), "batch");
    assert_eq!(dims.iter().skip(1).map(|d| d.dim_value()).collect::<Vec<_>>(), [3, 224, 224]);
    let mut ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    ops.sort();
    ops.dedup();
    assert_eq!(ops, ["Add", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "MaxPool", "Relu"]);
    // 53 convs (BN folded into each), the head's weight and bias.
    assert_eq!(graph.initializer.len(), 2 * 53 + 2);
    assert!(graph.initializer.iter().any(|t| t.name == "layer1.0.downsample.0.weight"));
}

/// Full-width ResNet-50 for ONNX Runtime: writes `resnet50.onnx`, an input batch and our logits
/// into `$ONNX_CHECK_DIR`; `crates/resnet/tests/fixtures/check_onnx_ort.py DIR` runs the file in
/// ONNX Runtime and prints the largest difference. Not run by CI (no Python there):
/// `ONNX_CHECK_DIR=/tmp/ort cargo test --release -p resnet --test onnx -- --ignored`.
#[test]
#[ignore]
fn full_width_resnet50_for_onnxruntime() {
    let Ok(dir) = std::env::var("ONNX_CHECK_DIR") else { panic!("set ONNX_CHECK_DIR") };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(Arch::Resnet50.config(1000), 50);
    resnet::export_onnx(&m, OnnxInput::default(), dir.join("resnet50.onnx")).unwrap();
    let x = Tensor::randn(&[2, 3, 224, 224], &mut Rng::seed(51));
    let y = Tensor::from_vec(our_logits(&m, &x), &[2, 1000]).unwrap();
    tensor::write_npy(dir.join("input.npy"), &x).unwrap();
    tensor::write_npy(dir.join("logits.npy"), &y).unwrap();
}

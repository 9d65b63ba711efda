//! Scripted REPL sessions through `Session::execute` (no terminal), and the piped front end
//! through `run_lines`. Networks are small (resnet18 with a few classes on 32-64 px inputs).

use cli_repl::repl::{run_lines, Output, Session};
use std::path::PathBuf;

/// Runs a line that must succeed; returns what it printed.
fn ok(s: &mut Session, line: &str) -> String {
    match s.execute(line) {
        Output::Text(t) => t,
        Output::Empty => String::new(),
        other => panic!("`{line}` gave {other:?}"),
    }
}

/// Runs a line that must fail; returns the message and the suggestion.
fn err(s: &mut Session, line: &str) -> (String, Option<String>) {
    match s.execute(line) {
        Output::Error { message, suggestion, .. } => {
            assert!(!message.contains("internal error"), "`{line}` panicked: {message}");
            (message, suggestion)
        }
        other => panic!("`{line}` should fail, gave {other:?}"),
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-repl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// The f32 values of a tensor variable.
fn values(s: &Session, name: &str) -> Vec<f32> {
    s.tensor(name).unwrap_or_else(|| panic!("no tensor `{name}`")).to_vec_f32().expect("f32 tensor")
}

#[test]
fn resnet18_session_from_build_to_prediction() {
    let mut s = Session::new();
    assert_eq!(ok(&mut s, "net = resnet18(num_classes=5)"), "");
    let params = ok(&mut s, "params(net)");
    assert!(params.contains("Total params: 11,179,077"), "{params}");
    assert!(params.contains("Trainable params: 11,179,077"), "{params}");
    let summary = ok(&mut s, "summary(net, (1, 3, 64, 64))");
    assert!(summary.contains("Total params: 11,179,077"), "{summary}");
    assert!(summary.contains("[1, 5]"), "{summary}");

    let block = ok(&mut s, "net.layer1[0]");
    assert!(block.starts_with("BasicBlock(\n  (conv1): Conv2d(64, 64, kernel_size=(3, 3)"), "{block}");
    assert!(block.contains("(bn2): BatchNorm2d(64"), "{block}");
    let tree = ok(&mut s, "net");
    assert!(
        tree.starts_with(
            "ResNet(\n  (conv1): Conv2d(3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)"
        ),
        "{tree}"
    );
    assert!(tree.contains("  (layer1): Sequential(\n    (0): BasicBlock(\n"), "{tree}");
    assert!(tree.contains("(fc): Linear(in_features=512, out_features=5, bias=True)"), "{tree}");

    ok(&mut s, "x = randn(2, 3, 64, 64)");
    assert_eq!(ok(&mut s, "net.training"), "True");
    ok(&mut s, "eval(net)");
    assert_eq!(ok(&mut s, "net.training"), "False");
    assert_eq!(ok(&mut s, "net.layer1[0].bn1.training"), "False");
    ok(&mut s, "y = net(x)");
    assert_eq!(ok(&mut s, "y.shape"), "torch.Size([2, 5])");
    assert_eq!(ok(&mut s, "y.shape[-1]"), "5");
    ok(&mut s, "p = softmax(y, dim=1)");
    for row in values(&s, "p").chunks(5) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    // A negative dim is the same dim, and the method form is the same function.
    ok(&mut s, "q = y.softmax(dim=-1)");
    assert_eq!(values(&s, "p"), values(&s, "q"));
    ok(&mut s, "sums = p.sum(dim=1)");
    assert!(values(&s, "sums").iter().all(|v| (v - 1.0).abs() < 1e-5));
    ok(&mut s, "a = argmax(y, dim=1)");
    let a = s.tensor("a").expect("a").to_vec_i64().expect("i64");
    let y = values(&s, "y");
    for (row, &best) in y.chunks(5).zip(&a) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(row[best as usize], max);
    }
    let (v, i) = (ok(&mut s, "v, i = topk(y, 2)"), ok(&mut s, "i.shape"));
    assert_eq!((v.as_str(), i.as_str()), ("", "torch.Size([2, 2])"));
    let pred = ok(&mut s, "predict(net, x[0], k=3, classes=['a', 'b', 'c', 'd', 'e'])");
    assert_eq!(pred.lines().count(), 3, "{pred}");
    assert!(pred.trim_start().starts_with("1. "), "{pred}");
    assert!(pred.contains('%'), "{pred}");
}

#[test]
fn save_and_load_round_trip() {
    let path = temp("roundtrip.safetensors");
    let p = path.display().to_string();
    let mut s = Session::new();
    ok(&mut s, "net = resnet18(num_classes=5)");
    ok(&mut s, "eval(net)");
    ok(&mut s, "x = randn(1, 3, 32, 32)");
    ok(&mut s, "y1 = net(x)");
    let saved = ok(&mut s, &format!("save(net, {p:?})"));
    assert!(saved.contains("saved 122 tensors"), "{saved}");
    ok(&mut s, "other = resnet18(num_classes=5)");
    ok(&mut s, "eval(other)");
    ok(&mut s, "before = other(x)");
    assert_ne!(values(&s, "before"), values(&s, "y1"), "a fresh net has other weights");
    let loaded = ok(&mut s, &format!("load(other, {p:?})"));
    assert!(loaded.contains("loaded 122 tensors"), "{loaded}");
    ok(&mut s, "y2 = other(x)");
    assert_eq!(values(&s, "y1"), values(&s, "y2"));
    // The file records its architecture, so the zoo function can build from it alone.
    ok(&mut s, &format!("third = resnet18(weights={p:?})"));
    ok(&mut s, "eval(third)");
    ok(&mut s, "y3 = third(x)");
    assert_eq!(values(&s, "y1"), values(&s, "y3"));
    // Another head: the backbone loads, the head is kept and reported.
    ok(&mut s, "small = resnet18(num_classes=3)");
    let report = ok(&mut s, &format!("load(small, {p:?})"));
    assert!(report.contains("kept the model's own head"), "{report}");
    assert!(report.contains("fc.weight"), "{report}");
    // A file that does not fit at all is refused, naming the keys.
    ok(&mut s, "big = resnet34(num_classes=5)");
    let (msg, _) = err(&mut s, &format!("load(big, {p:?})"));
    assert!(msg.contains("load_state_dict"), "{msg}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn freezing_a_stage_reduces_trainable_parameters() {
    let mut s = Session::new();
    ok(&mut s, "net = resnet18(num_classes=5)");
    let msg = ok(&mut s, "freeze(net.layer1)");
    assert!(msg.contains("147,968 parameters frozen"), "{msg}");
    let params = ok(&mut s, "params(net)");
    assert!(params.contains("Total params: 11,179,077"), "{params}");
    assert!(params.contains("Trainable params: 11,031,109"), "{params}");
    assert!(params.contains("Non-trainable params: 147,968"), "{params}");
    ok(&mut s, "unfreeze(net)");
    assert!(ok(&mut s, "params(net)").contains("Trainable params: 11,179,077"));
}

#[test]
fn custom_layers_and_blocks() {
    let mut s = Session::new();
    ok(&mut s, "m = Sequential(Conv2d(3, 16, 3, padding=1), BatchNorm2d(16), ReLU())");
    let tree = ok(&mut s, "m");
    assert!(
        tree.starts_with("Sequential(\n  (0): Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"),
        "{tree}"
    );
    ok(&mut s, "out = m(randn(2, 3, 8, 8))");
    assert_eq!(ok(&mut s, "out.shape"), "torch.Size([2, 16, 8, 8])");
    assert!(values(&s, "out").iter().all(|&v| v >= 0.0), "ReLU output");
    assert_eq!(ok(&mut s, "len(m)"), "3");
    assert!(ok(&mut s, "m[-1]").starts_with("ReLU("));

    ok(&mut s, "b = BasicBlock(64, 64)");
    assert!(ok(&mut s, "params(b)").contains("Total params: 73,984"));
    assert!(!ok(&mut s, "b").contains("downsample"));
    ok(&mut s, "b2 = BasicBlock(64, 128, stride=2)");
    assert!(ok(&mut s, "b2").contains("(downsample): Sequential("));
    ok(&mut s, "eval(b2)");
    assert_eq!(ok(&mut s, "b2(randn(1, 64, 8, 8)).shape"), "torch.Size([1, 128, 4, 4])");

    ok(&mut s, "bn = Bottleneck(256, 64)");
    assert!(ok(&mut s, "params(bn)").contains("Total params: 70,400"));
    assert_eq!(ok(&mut s, "bn(randn(1, 256, 4, 4)).shape"), "torch.Size([1, 256, 4, 4])");
    ok(&mut s, "bx = Bottleneck(64, 64, width_per_group=4, groups=32)");
    assert!(ok(&mut s, "bx").contains("groups=32"));

    ok(&mut s, "head = Sequential(AdaptiveAvgPool2d(1), Flatten(), Dropout(0.2), Linear(16, 4))");
    ok(&mut s, "eval(head)");
    assert_eq!(ok(&mut s, "head(out).shape"), "torch.Size([2, 4])");
    // Modules that are already bound are shared, not copied (PyTorch semantics).
    ok(&mut s, "both = Sequential(m, head)");
    ok(&mut s, "freeze(both)");
    assert!(ok(&mut s, "params(m)").contains("Trainable params: 0"));
    assert!(ok(&mut s, "MaxPool2d(3, stride=2, padding=1)").starts_with("MaxPool2d(kernel_size=3, stride=2, padding=1"));
    assert!(ok(&mut s, "Conv2d(8, 8, (1, 3), padding='same', bias=False)").contains("padding=(0, 1)"));
}

#[test]
fn custom_resnet_matches_the_zoo() {
    let mut s = Session::new();
    ok(&mut s, "rx = ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4)");
    assert!(ok(&mut s, "params(rx)").contains("Total params: 25,028,904"));
    ok(&mut s, "small = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=7)");
    assert!(ok(&mut s, "params(small)").contains("Total params: 11,180,103"));
    let vars = ok(&mut s, ":vars");
    assert!(vars.contains("resnext50_32x4d, 1000 classes"), "{vars}");
    assert!(vars.contains("resnet18, 7 classes"), "{vars}");
}

#[test]
fn tensors_and_arithmetic() {
    let mut s = Session::new();
    assert_eq!(ok(&mut s, "tensor([[1, 2], [3, 4]])"), "tensor([[1, 2],\n        [3, 4]])");
    assert_eq!(ok(&mut s, "tensor([[1., 2], [3, 4]])"), "tensor([[1., 2.],\n        [3., 4.]])");
    assert_eq!(ok(&mut s, "tensor([1, 2]).dtype"), "torch.int64");
    assert_eq!(ok(&mut s, "t = tensor([0.5, -1.25]) * 2; t"), "tensor([ 1.0000, -2.5000])");
    assert_eq!(ok(&mut s, "ones(2, 2) + tensor([1.0, 2.0])"), "tensor([[2., 3.],\n        [2., 3.]])");
    assert_eq!(ok(&mut s, "(ones(2, 3) @ ones(3, 4)).shape"), "torch.Size([2, 4])");
    assert_eq!(ok(&mut s, "zeros(2, 3).mean()"), "tensor(0.)");
    assert_eq!(ok(&mut s, "tensor([1.0, 3.0]).mean().item()"), "2.0");
    assert_eq!(ok(&mut s, "tensor([[1., 5.], [7., 2.]]).max(dim=1)[1]"), "tensor([1, 0])");
    assert_eq!(ok(&mut s, "randn(2, 3, 4).permute(2, 0, 1).shape"), "torch.Size([4, 2, 3])");
    assert_eq!(ok(&mut s, "randn(2, 3, 4).reshape(-1, 4).shape"), "torch.Size([6, 4])");
    assert_eq!(ok(&mut s, "randn(2, 3).unsqueeze(-1).shape"), "torch.Size([2, 3, 1])");
    assert_eq!(ok(&mut s, "arange(4)"), "tensor([0, 1, 2, 3])");
    assert_eq!(ok(&mut s, "cat([ones(1, 2), zeros(1, 2)], dim=0).shape"), "torch.Size([2, 2])");
    assert_eq!(ok(&mut s, "torch.randn(1, 2).shape"), "torch.Size([1, 2])");
    assert_eq!(ok(&mut s, "F.softmax(tensor([0.0, 0.0]), dim=0)"), "tensor([0.5000, 0.5000])");
    assert_eq!(ok(&mut s, "7 // 2, -7 // 2, 7 % -2, 2 ** 10, 1 / 4"), "(3, -4, -1, 1024, 0.25)");
    assert_eq!(ok(&mut s, "-3 + 1.5"), "-1.5");
    assert_eq!(ok(&mut s, "'res' + 'net'"), "'resnet'");
    assert_eq!(ok(&mut s, "x = 2; x * 21"), "42");
    assert_eq!(ok(&mut s, "_ + 1"), "43");
    assert_eq!(ok(&mut s, "[1, (2,), None, True]"), "[1, (2,), None, True]");
    assert_eq!(ok(&mut s, "r = print('a', 1); r; print([2.5], 'b')"), "a 1\n[2.5] b");
    // Big tensors print as their statistics rather than a wall of numbers.
    assert!(ok(&mut s, "zeros(2, 3, 64, 64)").contains("size=(2, 3, 64, 64)"));
    let manual = ok(&mut s, "manual_seed(1); a = randn(3); manual_seed(1); b = randn(3); (a - b).abs().max()");
    assert_eq!(manual, "tensor(0.)");
}

#[test]
fn errors_are_reported_not_fatal() {
    let mut s = Session::new();
    let (msg, sugg) = err(&mut s, "net = resnet5(num_classes=3)");
    assert!(msg.contains("`resnet5` is not defined"), "{msg}");
    assert_eq!(sugg.as_deref(), Some("resnet50"));
    let shown = s.execute("resnet5()").to_string();
    assert_eq!(shown, "error: name `resnet5` is not defined (did you mean `resnet50`?)");
    let (_, sugg) = err(&mut s, "sofmax");
    assert_eq!(sugg.as_deref(), Some("softmax"));
    let (msg, sugg) = err(&mut s, "resnet18(num_class=3)");
    assert!(msg.contains("unexpected keyword argument `num_class`"), "{msg}");
    assert_eq!(sugg.as_deref(), Some("num_classes"));
    let (_, sugg) = err(&mut s, ":hlep");
    assert_eq!(sugg.as_deref(), Some(":help"));

    ok(&mut s, "net = resnet18(num_classes=3)");
    let (_, sugg) = err(&mut s, "net.layr4");
    assert_eq!(sugg.as_deref(), Some("layer4"));
    let (msg, _) = err(&mut s, "net(randn(1, 4, 32, 32))");
    assert!(msg.contains("Conv2d") || msg.contains("conv"), "{msg}");
    let (msg, _) = err(&mut s, "net(randn(3, 32, 32))");
    assert!(!msg.is_empty());
    let (msg, _) = err(&mut s, "net(tensor([1, 2]))");
    assert!(msg.contains("float32"), "{msg}");
    let (msg, _) = err(&mut s, "load(net, 'no/such/file.pth')");
    assert!(msg.contains("no/such/file.pth"), "{msg}");
    let (msg, _) = err(&mut s, "softmax(randn(2, 3))");
    assert!(msg.contains("missing required argument `dim`") && msg.contains("softmax(input, dim)"), "{msg}");
    let (msg, _) = err(&mut s, "softmax(randn(2, 3), dim=2)");
    assert!(msg.contains("dimension 2 is out of range"), "{msg}");
    let (msg, _) = err(&mut s, "Conv2d(3, 8)");
    assert!(msg.contains("kernel_size"), "{msg}");
    let (msg, _) = err(&mut s, "Linear('a', 3)");
    assert!(msg.contains("Linear(): argument `in_features` must be an int, got str"), "{msg}");

    for bad in ["1 +", "f(a=1, 2)", ")", "x = = 2", "net.fc = Linear(512, 3)", "{1: 2}", "y[0:2]", "1 == 1"] {
        let (msg, _) = err(&mut s, bad);
        assert!(msg.starts_with("syntax error"), "{bad}: {msg}");
    }
    assert!(err(&mut s, "1 / 0").0.contains("division by zero"));
    assert!(err(&mut s, "1.5 // 0").0.contains("division by zero"));
    assert!(err(&mut s, "2 ** 100").0.contains("overflow"));
    let (msg, _) = err(&mut s, "zeros(100000, 100000, 100000)");
    assert!(msg.contains("limit"), "{msg}");
    assert!(err(&mut s, "randn(2 ** 62, 2 ** 62)").0.contains("limit"));
    assert!(err(&mut s, "Linear(100000, 100000)").0.contains("limit"));
    assert!(err(&mut s, "ResNet(BasicBlock, [1000, 1000, 1000, 1000])").0.contains("limit"));
    assert!(err(&mut s, "net(randn(1, 3, 6000, 6000))").0.contains("limit"));
    let ones = vec!["1"; 70].join(", ");
    assert!(err(&mut s, &format!("zeros({ones})")).0.contains("at most 64 dimensions"));
    ok(&mut s, "a = []");
    let nested = (0..80).map(|_| s.execute("a = [a]")).find(Output::is_error);
    assert!(nested.is_some_and(|e| e.to_string().contains("nest at most 64")));
    // The session is intact after all that.
    ok(&mut s, "eval(net)");
    assert_eq!(ok(&mut s, "net(randn(1, 3, 32, 32)).shape"), "torch.Size([1, 3])");
}

#[test]
fn nothing_typed_crashes_the_session() {
    let mut s = Session::new();
    ok(&mut s, "net = resnet18(num_classes=2); x = randn(1, 3, 16, 16); m = Sequential()");
    let lines = [
        "x[100]",
        "x[0, 0, 0, 0, 0]",
        "tensor([[1, 2], [3]])",
        "tensor([1, [2]])",
        "randn(-1)",
        "zeros(0).max()",
        "zeros(0, 3).argmax()",
        "tensor([]).mean()",
        "randn(2, 3).reshape(-1, -1)",
        "randn(2, 3).permute(0, 0)",
        "narrow(randn(3), 0, 2, 5)",
        "randn(2, 3) @ randn(4, 5)",
        "tensor([9223372036854775807]) + 1",
        "-tensor([-9223372036854775807 - 1])",
        "abs(-9223372036854775807 - 1)",
        "0 ** -1",
        "10 ** 1000",
        "'a' * 3",
        "len(5)",
        "Conv2d(3, 8, 0)",
        "Conv2d(3, 8, 3, groups=2)",
        "MaxPool2d(3, padding=5)",
        "Dropout(1.5)",
        "BatchNorm2d(0)",
        "resnet18(num_classes=0)",
        "resnet18(num_classes=10 ** 12)",
        "net.layer1[99]",
        "net[0]",
        "AdaptiveAvgPool2d(1)(randn(1, 3))",
        "Flatten(5)(randn(2, 3))",
        "BatchNorm2d(3)(randn(1, 3))",
        "Conv2d(3, 4, 9)(randn(1, 3, 4, 4))",
        "MaxPool2d(3)(randn(1, 1, 2, 2))",
        "Linear(4, 2)(randn(3, 5))",
        "Linear(4, 2)(randn(4))",
        "summary(net, (1, 3, 10 ** 6, 10 ** 6))",
        "summary(net, (1, 3))",
        "summary(x)",
        "topk(randn(2, 3), 10)",
        "topk(tensor(1.0), 1)",
        "x.item()",
        "x.size(9)",
        "x.unsqueeze(9)",
        "x.transpose(0, 7)",
        "x.flatten(3, 1)",
        "randn(3).t().t()[7]",
        "stack([])",
        "cat([x, randn(2, 2)])",
        "ResNet(BasicBlock, [2, 2])",
        "ResNet(Conv2d, [2, 2, 2, 2])",
        "ResNet(BasicBlock, [2, 2, 2, 2], groups=2)",
        "Bottleneck(64, 1, width_per_group=1)",
        "BasicBlock(64, 64, dilation=2)",
        "predict(net, x, classes=['a'])",
        "predict(net, randn(5))",
        "m(5)",
        "net(x, x)",
        "5(3)",
        "torch(1)",
        "x.nope",
        "net.conv1.weight.nope()",
        "import numpy",
        "from torch import nope",
        "save(net, '/no/such/dir/w.safetensors')",
        "image('missing.jpg')",
        "predict(net, x, classes='missing.json')",
        "tensor('abc')",
        "arange(0, 10, 0)",
        "arange(10 ** 18)",
        "full((2, 2), 'a')",
        "x.clamp(min=1, max=0)",
        "x.float().long().softmax(1)",
        "(x > 0)",
        "[1, 2][5]",
        "(1, 2)[-3]",
        "'abc'[10]",
        "print(1, sep=2)",
        "help(5)",
        "dir(net)",
        "type(x)",
        "m(x)",
        "lambda: 1",
        "def f(): pass",
        "y = ",
        "= 3",
        "a, b = 1",
        "a, b = (1, 2, 3)",
        "x.max(dim=1)[0][0][0][0]",
        "ones(2, 2) // 2",
        "ones(2) ** ones(2)",
        "ones(2) + 'a'",
        "x.T.shape",
        "freeze(5)",
        "train(net, mode=3)",
        "load(net, 5)",
        "Sequential(Conv2d)",
        "Sequential(1)",
        "F.nope",
        "torch.nn.Conv2d(1, 1, 1)",
    ];
    for line in lines {
        let out = s.execute(line);
        if let Output::Error { message, .. } = &out {
            assert!(!message.contains("internal error"), "`{line}` panicked: {message}");
        }
        assert!(!matches!(out, Output::Quit | Output::Incomplete), "`{line}` gave {out:?}");
    }
    // Still alive and unchanged.
    ok(&mut s, "eval(net)");
    assert_eq!(ok(&mut s, "net(x).shape"), "torch.Size([1, 2])");
}

#[test]
fn multi_line_input_and_commands() {
    let mut s = Session::new();
    assert_eq!(s.execute("net = resnet18("), Output::Incomplete);
    assert!(s.is_pending());
    assert_eq!(s.execute("    num_classes=4,"), Output::Incomplete);
    assert_eq!(s.execute(")"), Output::Empty);
    assert!(!s.is_pending());
    assert!(ok(&mut s, "params(net)").contains("Total params: 11,178,564"));
    assert_eq!(s.execute("y = 1 + \\"), Output::Incomplete);
    assert_eq!(s.execute("2"), Output::Empty);
    assert_eq!(ok(&mut s, "y"), "3");
    assert_eq!(s.execute("[1,"), Output::Incomplete);
    s.cancel_pending();
    assert!(!s.is_pending());
    assert_eq!(s.execute("(1, ["), Output::Incomplete);
    let end = s.end_of_input();
    assert!(end.to_string().contains("unexpected end of input: unclosed `(`, `[`"), "{end}");

    assert!(ok(&mut s, ":help").contains("Working with models"));
    assert!(ok(&mut s, ":help softmax").contains("softmax(input, dim)"));
    assert!(ok(&mut s, "help(resnet50)").contains("resnet50(num_classes=1000"));
    let vars = ok(&mut s, ":vars");
    assert!(vars.contains("net") && vars.contains("resnet18, 4 classes") && vars.contains("training mode"), "{vars}");
    assert_eq!(s.execute(":quit"), Output::Quit);
    assert_eq!(s.execute("exit()"), Output::Quit);
    assert_eq!(ok(&mut s, "import torch.nn as tnn; tnn.ReLU()"), "ReLU()");
    assert_eq!(ok(&mut s, "from torchvision.models import resnet18 as r18; r18"), "<built-in function resnet18>");
    ok(&mut s, ":reset");
    assert!(s.variable_names().is_empty());
}

#[test]
fn completion() {
    let mut s = Session::new();
    ok(&mut s, "network = resnet18(num_classes=2)");
    let (start, c) = s.complete("y = netw", 8);
    assert_eq!((start, c), (4, vec!["network".to_string()]));
    let (_, c) = s.complete("resnext", 7);
    assert_eq!(c, ["resnext101_32x8d(", "resnext101_64x4d(", "resnext50_32x4d("]);
    let (start, c) = s.complete("network.lay", 11);
    assert_eq!(start, 8);
    assert_eq!(c, ["layer1", "layer2", "layer3", "layer4"]);
    let (_, c) = s.complete("network.layer1[0].c", 19);
    assert_eq!(
        c,
        ["children", "conv1", "conv2"].iter().filter(|n| **n != "children").map(|s| s.to_string()).collect::<Vec<_>>()
    );
    let (start, c) = s.complete(":he", 3);
    assert_eq!((start, c), (0, vec![":help".to_string()]));
    let (_, c) = s.complete("randn(2).sha", 12);
    assert!(c.is_empty(), "no call is evaluated while completing: {c:?}");
}

#[test]
fn piped_input_runs_line_by_line() {
    let script = "\
net = resnet18(num_classes=3)
eval(net)
x = randn(1, 3, 32, 32)
y = net(x)
y.shape
resnet5()
softmax(y,
        dim=1).shape
print('done')
:quit
print('not reached')
";
    let mut out = Vec::new();
    run_lines(script.as_bytes(), &mut out).expect("in-memory I/O");
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        out,
        "torch.Size([1, 3])\n\
         error: name `resnet5` is not defined (did you mean `resnet50`?)\n\
         torch.Size([1, 3])\n\
         done\n"
    );
    assert!(!out.contains('\x1b') && !out.contains(">>>"));

    let mut out = Vec::new();
    run_lines("x = (1,\n".as_bytes(), &mut out).expect("in-memory I/O");
    assert_eq!(String::from_utf8(out).expect("utf-8"), "error: syntax error: unexpected end of input: unclosed `(`\n");
}

/// `cam(model, input, class=None)`: Grad-CAM heatmaps of a ResNet, `[N, H, W]` in `[0, 1]`, for
/// the predicted classes by default; the model's mode is left as it was.
#[test]
fn grad_cam_heatmaps() {
    let mut s = Session::new();
    ok(&mut s, "net = resnet18(num_classes=3, base_planes=8)");
    ok(&mut s, "x = randn(2, 3, 64, 48)");
    ok(&mut s, "h = cam(net, x)");
    assert_eq!(ok(&mut s, "h.shape"), "torch.Size([2, 64, 48])");
    assert_eq!(ok(&mut s, "net.training"), "True", "cam() must give the model its mode back");
    let h = values(&s, "h");
    for map in h.chunks(64 * 48) {
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "values outside [0, 1]");
        let max = map.iter().copied().fold(0f32, f32::max);
        assert!(max == 0.0 || (max - 1.0).abs() < 1e-5, "a map scaled to [0, 1] peaks at 1, got {max}");
    }
    // The default class is the predicted one (eval mode), given as a list of one per image.
    ok(&mut s, "eval(net)");
    ok(&mut s, "y = net(x)");
    let y = values(&s, "y");
    let argmax = |row: &[f32]| (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    let (a, b) = (argmax(&y[..3]), argmax(&y[3..]));
    ok(&mut s, &format!("g = cam(net, x, [{a}, {b}])"));
    assert_eq!(values(&s, "g"), h);
    // One class for every image, by keyword; a single image without its batch dimension.
    ok(&mut s, "c = cam(net, x, class=2)");
    ok(&mut s, "d = cam(net, x, (2, 2))");
    assert_eq!(values(&s, "c"), values(&s, "d"));
    assert_eq!(ok(&mut s, "cam(net, x[0]).shape"), "torch.Size([1, 64, 48])");

    let (m, _) = err(&mut s, "cam(net.layer1, x)");
    assert!(m.contains("must be a whole ResNet"), "{m}");
    let (m, _) = err(&mut s, "cam(net, x, [1])");
    assert!(m.contains("1 classes for a batch of 2 images"), "{m}");
    let (m, _) = err(&mut s, "cam(net, x, 3)");
    assert!(m.contains("class 3 is out of range for a head of 3 classes"), "{m}");
    let (m, _) = err(&mut s, "cam(net, x, -1)");
    assert!(m.contains("negative"), "{m}");
    let (m, _) = err(&mut s, "cam(net, x, 'cat')");
    assert!(m.contains("`class` must be an int"), "{m}");
    let (m, _) = err(&mut s, "cam(net, randn(2, 4, 64, 48))");
    assert!(m.contains("fails"), "{m}");
    assert!(ok(&mut s, "help(cam)").contains("cam(model, input, class=None)"));
}

#!/usr/bin/env python3
"""PyTorch's side of the benchmark cases: the same names, inputs and measuring rules as
benches/src/main.rs, and the same output, one JSON line per case:
{"name", "samples": [seconds...], "flops", "images", "peak_rss_mb"}.

    python3 benches/torch_cases.py [--device cpu|cuda] --list
    python3 benches/torch_cases.py [--device cpu|cuda] [--quick] [--threads N] NAME...
    python3 benches/torch_cases.py --versions
    python3 benches/torch_cases.py --predict WEIGHTS IMAGE   # predict-cold-resnet50's Python side

On the CPU, each inference case `infer-X` also has the prepared variants our prepared model is
compared with: `frozen:infer-X` (torch.jit.freeze + optimize_for_inference) and `ort:infer-X`
(the model exported to ONNX by torch.onnx, run by ONNX Runtime with the same thread count); the
load cases read the same format as ours (safetensors through safetensors.torch; .pth through
torch.load). peak_rss_mb is net of `import torch` (what the process holds before any case).

On cuda, TF32 is off (our kernels compute in plain f32; `--tf32 default` keeps PyTorch's
defaults, where cuDNN's convolutions may use TF32) and every timed run ends with
torch.cuda.synchronize(), as ours end by reading a result back.

`cargo xtask bench --vs-torch` runs it interleaved with our cases.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

CONV_BATCH = 8
# tag, cin, cout, k, stride, groups, size (padding k // 2). Keep in step with benches/src/main.rs.
CONV_SHAPES = [
    ("7x7s2-3to64-224", 3, 64, 7, 2, 1, 224),
    ("3x3-64to64-56", 64, 64, 3, 1, 1, 56),
    ("1x1-256to64-56", 256, 64, 1, 1, 1, 56),
    ("3x3-256to256-14", 256, 256, 3, 1, 1, 14),
    ("3x3g32-128to128-56", 128, 128, 3, 1, 32, 56),
]


def matmul_case(n):
    def prepare():
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        return (lambda: torch.mm(a, b)), 2.0 * n ** 3, None
    return prepare


def conv_case(cin, cout, k, s, g, size, which):
    def prepare():
        x = torch.randn(CONV_BATCH, cin, size, size)
        w = torch.randn(cout, cin // g, k, k)
        pad = k // 2
        y = F.conv2d(x, w, None, s, pad, 1, g)
        gy = torch.randn_like(y)
        macs = y.numel() * (cin // g) * k * k
        if which == "fwd":
            run = lambda: F.conv2d(x, w, None, s, pad, 1, g)
        else:
            mask = [which == "bwd-input", which == "bwd-weight", False]
            run = lambda: torch.ops.aten.convolution_backward(
                gy, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], g, mask)
        return run, 2.0 * macs, CONV_BATCH
    return prepare


def bench_data_root():
    """The folder of 500x375 JPEGs that benches/src/data_cases.rs generates (keep in step)."""
    import tempfile
    return os.environ.get("RESNET_RS_BENCH_DATA") or os.path.join(tempfile.gettempdir(), "resnet-rs-bench-data-v1")


def data_case(train):
    """The tutorial's train or eval pipeline through DataLoader(batch_size=32, num_workers=2);
    one run is one epoch over the folder (worker start-up included, as in a training loop
    without persistent_workers)."""
    def prepare():
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms as T
        root = os.path.join(bench_data_root(), "train")
        if not os.path.isfile(os.path.join(bench_data_root(), "demo.json")):
            sys.exit(f"torch_cases: {root} is missing; run our side first "
                     "(cargo xtask bench --filter data), which generates it")
        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        if train:
            tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        else:
            tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
        ds = datasets.ImageFolder(root, tf)
        loader = DataLoader(ds, batch_size=32, shuffle=train, num_workers=2)

        def run():
            for x, y in loader:
                pass
        return run, None, len(ds)
    return prepare


DEVICE = "cpu"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


THREADS = 0


def infer_case(arch, batch, variant="eager"):
    def prepare():
        import torchvision
        model = getattr(torchvision.models, arch)().eval().to(DEVICE)
        x = torch.randn(batch, 3, 224, 224, device=DEVICE)
        if variant == "frozen":
            with torch.no_grad():
                model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
        elif variant == "ort":
            return ort_session(model, x), None, batch

        def run():
            model(x)
            sync()
        return run, None, batch
    return prepare


def ort_session(model, x):
    """`model` exported to ONNX (opset 17, fixed batch) and run by ONNX Runtime, with every
    graph optimisation, sequential execution and the case's thread count."""
    import tempfile
    import onnxruntime as ort
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    # The TorchScript exporter (torch 2.x's default one needs onnxscript); 1.13 has only it.
    kwargs = {"dynamo": False} if int(torch.__version__.split(".")[0]) >= 2 else {}
    torch.onnx.export(model, x, path, input_names=["input"], output_names=["logits"], opset_version=17, **kwargs)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = THREADS or os.cpu_count()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def train_case(arch, batch, size, classes):
    def prepare():
        import torchvision
        model = getattr(torchvision.models, arch)(num_classes=classes).train().to(DEVICE)
        x = torch.randn(batch, 3, size, size, device=DEVICE)
        y = torch.arange(batch, device=DEVICE) % classes
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            loss.item()  # as our training loop reads its loss every step
        return run, None, batch
    return prepare


def load_case(fmt):
    """resnet50's weights read from a file into the model, in the same format as ours."""
    def prepare():
        import tempfile
        import torchvision
        model = torchvision.models.resnet50()
        folder = tempfile.mkdtemp()
        if fmt == "safetensors":
            from safetensors.torch import load_file, save_file
            path = os.path.join(folder, "resnet50.safetensors")
            save_file(model.state_dict(), path)
            return (lambda: model.load_state_dict(load_file(path))), None, None
        path = os.path.join(folder, "resnet50.pth")
        torch.save(model.state_dict(), path)
        return (lambda: model.load_state_dict(torch.load(path))), None, None
    return prepare


def predict(weights, image):
    """What `resnet predict --weights W IMAGE` does, in Python: build resnet50, load the
    weights, preprocess one JPEG as torchvision's eval transform, classify it, print the top
    class. Timed from outside, as a whole process (imports included)."""
    import torchvision
    from PIL import Image
    from torchvision import transforms as T
    model = torchvision.models.resnet50()
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file
        model.load_state_dict(load_file(weights))
    else:
        model.load_state_dict(torch.load(weights))
    model.eval()
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = tf(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        p = model(x).softmax(1)
    print(int(p.argmax()), float(p.max()))


def gpu_cases():
    c = {}
    for name, arch, batch in [("infer-resnet18-b1", "resnet18", 1), ("infer-resnet50-b1", "resnet50", 1),
                              ("infer-resnet50-b8", "resnet50", 8), ("infer-resnext50-b1", "resnext50_32x4d", 1),
                              ("infer-resnet50-b1-unfused", "resnet50", 1), ("infer-resnet18-b64", "resnet18", 64),
                              ("infer-resnet50-b64", "resnet50", 64)]:
        c[name] = infer_case(arch, batch)
    c["train-resnet18-b16"] = train_case("resnet18", 16, 224, 1000)
    c["train-resnet50-b8"] = train_case("resnet50", 8, 224, 1000)
    c["train-resnet18-b64-64px"] = train_case("resnet18", 64, 64, 10)
    c["train-resnet18-b64"] = train_case("resnet18", 64, 224, 1000)
    c["train-resnet50-b64"] = train_case("resnet50", 64, 224, 1000)
    return c


def cases():
    if DEVICE != "cpu":
        return gpu_cases()
    c = {f"matmul-{n}": matmul_case(n) for n in (1024, 2048)}
    for tag, cin, cout, k, s, g, size in CONV_SHAPES:
        for which in ("fwd", "bwd-input", "bwd-weight"):
            c[f"conv-{tag}-{which}"] = conv_case(cin, cout, k, s, g, size, which)
    c["data-train-b32"] = data_case(True)
    c["data-eval-b32"] = data_case(False)
    for name, arch, batch in [("infer-resnet18-b1", "resnet18", 1), ("infer-resnet50-b1", "resnet50", 1),
                              ("infer-resnet50-b8", "resnet50", 8), ("infer-resnext50-b1", "resnext50_32x4d", 1),
                              ("infer-resnet50-b1-unfused", "resnet50", 1)]:
        c[name] = infer_case(arch, batch)
        if not name.endswith("-unfused"):
            # The prepared comparators of our prepared (batch-norm-folded) model.
            c["frozen:" + name] = infer_case(arch, batch, "frozen")
            if have("onnxruntime"):
                c["ort:" + name] = infer_case(arch, batch, "ort")
    c["train-resnet18-b16"] = train_case("resnet18", 16, 224, 1000)
    c["train-resnet50-b8"] = train_case("resnet50", 8, 224, 1000)
    c["train-resnet18-b64-64px"] = train_case("resnet18", 64, 64, 10)
    # The same format on both sides.
    if have("safetensors"):
        c["load-resnet50"] = load_case("safetensors")
    c["load-resnet50-pth"] = load_case("pth")
    return c


def have(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def versions():
    v = {"torch": torch.__version__}
    for m in ("torchvision", "onnxruntime"):
        if have(m):
            v[m] = __import__(m).__version__
    return v


def measure(run, quick):
    warmup, min_runs, min_time, max_time = (1, 3, 0.2, 5.0) if quick else (2, 10, 2.0, 30.0)
    for _ in range(warmup):
        run()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_runs or (time.perf_counter() - start < min_time and len(samples) < 1000):
        t = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_time and len(samples) >= min_runs:
            break
    return samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", default="off", choices=["off", "default"],
                    help="on cuda: TF32 off (plain f32, as our kernels) or PyTorch's defaults")
    ap.add_argument("--versions", action="store_true")
    ap.add_argument("--predict", nargs=2, metavar=("WEIGHTS", "IMAGE"))
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    if args.versions:
        print(json.dumps(versions()))
        return
    if args.predict:
        predict(*args.predict)
        return
    global DEVICE, THREADS
    DEVICE = args.device
    THREADS = args.threads
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            print("torch_cases: CUDA is not available to this PyTorch", file=sys.stderr)
            sys.exit(3)
        if args.tf32 == "off":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        # else PyTorch's defaults: cuDNN's convolutions may use TF32, matmul does not.
        torch.backends.cudnn.benchmark = True
    all_cases = cases()
    if args.list:
        print("\n".join(all_cases))
        if DEVICE == "cpu" and have("safetensors"):
            # Run by the xtask as whole processes of --predict.
            print("predict-cold-resnet50")
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # What the process holds before any case (import torch, its libraries): peak memory is
    # reported net of it.
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for name in args.names:
        if name not in all_cases:
            print(f"torch_cases: unknown case {name}", file=sys.stderr)
            sys.exit(2)
        with torch.set_grad_enabled(name.startswith("train-")):
            run, flops, images = all_cases[name]()
            samples = measure(run, args.quick)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - baseline
        print(json.dumps({"name": name, "samples": samples, "flops": flops, "images": images,
                          "peak_rss_mb": rss}), flush=True)


if __name__ == "__main__":
    main()

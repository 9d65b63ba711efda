#!/usr/bin/env bash
# The GPU check, run on the machine with the GPU (after benches/gpu/build.sh here): one script,
# about ten minutes at most.
#   (a) the device test suites on CUDA (every op, and training steps, against the host);
#   (b) ResNet-18 and ResNet-50 training and inference, batch 64 at 224x224, ours on CUDA
#       (cubek's products; for ResNet-50 also our own matmul kernel, RESNET_GPU_MATMUL=own)
#       against PyTorch on the same GPU twice: TF32 off and PyTorch's defaults (cuDNN's
#       convolutions may use TF32), and the ratios. Whether cubek's tensor-core routine runs f32
#       in TF32 shows in (a): the suites' tolerance is 1e-4.
# Results are printed as a markdown table for the book's benchmark chapter.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=target/gpu-check
py=${PYTHON:-python3}

# cubecl's CUDA runtime loads libcuda (the driver) and NVRTC at run time; PyTorch's wheels ship
# NVRTC under site-packages/nvidia/*/lib, which is where a bare machine with PyTorch has it.
nv_libs=$("$py" - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${nv_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RESNET_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== (a) device test suites on cuda"
status=0
for t in tensor-device nn-device; do
    timeout 240 "$bin/$t" --test-threads 1 2>&1 | tail -4 || status=1
done

echo "== (b) ResNet-18 and ResNet-50, batch 64, 224x224: ours on cuda vs PyTorch on cuda"
cases="infer-resnet18-b64 infer-resnet50-b64 train-resnet18-b64 train-resnet50-b64"
results=$(mktemp)
for c in $cases; do
    timeout 120 "$bin/bench-cases" --device cuda --quick "$c" | tail -1 | sed 's/^/ours /' >> "$results" || status=1
    case $c in *resnet50*)
        # Our own tiled kernel for every product instead of cubek's, to see what cubek gains.
        RESNET_GPU_MATMUL=own timeout 120 "$bin/bench-cases" --device cuda --quick "$c" | tail -1 |
            sed 's/^/ours-own /' >> "$results" || status=1 ;;
    esac
    timeout 90 "$py" benches/torch_cases.py --device cuda --quick "$c" | tail -1 | sed 's/^/torch /' >> "$results" || status=1
    timeout 90 "$py" benches/torch_cases.py --device cuda --tf32 default --quick "$c" | tail -1 |
        sed 's/^/torch-tf32 /' >> "$results" || status=1
done
"$py" - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, _, js = line.partition(" ")
    try:
        r = json.loads(js)
    except ValueError:
        continue
    rows.setdefault(r["name"], {})[side] = statistics.median(r["samples"])
print("| case | ours (ms) | ours, own matmul (ms) | PyTorch, TF32 off (ms) | PyTorch, defaults (ms) "
      "| images/s ours | images/s PyTorch off / defaults | ours / PyTorch images/s, off / defaults |")
print("|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    o, own, t, d = r.get("ours"), r.get("ours-own"), r.get("torch"), r.get("torch-tf32")
    fmt = lambda v: f"{v * 1000:.1f}" if v else "-"
    ips = lambda v: f"{64 / v:.0f}" if v else "-"
    ratio = lambda v: f"{v / o:.2f}x" if o and v else "-"
    print(f"| {name} | {fmt(o)} | {fmt(own)} | {fmt(t)} | {fmt(d)} | {ips(o)} | {ips(t)} / {ips(d)} "
          f"| {ratio(t)} / {ratio(d)} |")
PY
exit $status

#!/usr/bin/env python3
"""Per-layer-type shares of a `perf record --call-graph dwarf` profile of a bench case.

    RAYON_NUM_THREADS=2 perf record -F 300 -e cpu-clock --call-graph dwarf,16384 -o case.perf \\
        target/release/bench-cases CASE >/dev/null
    perf script -i case.perf -F comm,tid,time,ip,sym > case.txt
    python3 benches/profile/layers.py case.txt [--marker 'Trainer::step'] [--top 15]

Samples before the first one whose stack contains the marker (`Trainer::step` for training
cases, `FusedResNet` for prepared inference), plus `--skip` seconds of warm-up, are the setup
(building the model, faulting in its memory) and are left out. A sample whose leaf is the
kernel zeroing fresh pages, or the allocator zeroing a buffer, counts as such; any other is
filed under the first rule of LAYER_RULES (in order) that a frame of its stack matches, so a
`gemm` micro-kernel sample goes to the conv pass that called it. Work that rayon runs on its
threads has only the kernel's own frames on its stack: the Winograd input gradient of a 3x3
conv is therefore filed with the Winograd forward passes. A development tool: CI does not run
it (the book's benchmark chapter has its tables).
"""
import argparse
import collections
import sys

# A sample's leaf decides first (page faults); then the first layer rule that any frame of
# the stack matches, rules in order (a backward pass before the forward kernel it runs); the
# machinery shared between a layer and its leaf (the `gemm` crate, our GEMM wrappers, im2col,
# rayon's plumbing) matches no layer rule.
LEAF_RULES = [
    ("page faults (kernel zeroing fresh pages)", ["clear_page", "asm_exc_page_fault", "folio_zero"]),
]
ZEROING = ["_mi_memzero", "mi_theap_malloc_zero", "alloc_zeroed", "from_elem"]
LAYER_RULES = [
    ("conv, weight gradient", ["conv2d_backward_weight", "winograd::backward_weight", "transform_grad_impl"]),
    ("conv, input gradient", ["conv2d_backward_input", "backward_input_blocks", "col2im"]),
    # The input gradient of a stride-1 3x3 conv is a Winograd forward pass; its work items
    # run on rayon's threads, whose stacks do not reach `conv2d_backward_input`, so they land here.
    # The transforms keep two 9 KiB blocks on the stack, so a 16 KiB stack copy often ends
    # inside them: their frames carry only the inlined names, without the module path (an input
    # transform for the weight gradient is then filed here too).
    ("conv, Winograd 3x3 (forward and input gradient)", ["winograd::", "transform_input_impl", "transform_output_impl"]),
    ("conv forward, direct grouped", ["kernels::direct::"]),
    ("conv forward, im2col or 1x1 GEMM", ["kernels::conv::", "PreparedConv", "conv2d_affine"]),
    ("batch norm", ["batch_norm"]),
    ("pooling", ["kernels::pool::"]),
    ("optimizer", ["kernels::optim::"]),
    ("loss", ["cross_entropy", "log_softmax", "nll_loss"]),
    ("linear / matmul", ["Tensor>::matmul", "Tensor::matmul", "linear"]),
    ("elementwise (ReLU, add, scale, ...)", ["tensor::tensor::host::"]),
    ("autograd bookkeeping", ["nn::autograd"]),
]
# Helpers shared by several conv passes: a sample in one is filed under the pass above it.
SHARED_HELPERS = ["kernels::conv::im2col", "kernels::conv::gather_", "kernels::matmul::", "kernels::scratch::"]
FALLBACK_RULES = [
    ("GEMM, caller not unwound", ["gemm"]),
    ("memcpy (copies, gathers)", ["__memcpy", "__memmove"]),
    ("memset", ["__memset"]),
    ("threads (rayon, scheduling)", ["rayon", "crossbeam", "finish_task_switch", "futex", "schedule"]),
    ("allocator", ["mi_", "alloc::"]),
]


def samples(path):
    """Yields (time, [frames leaf first]) from `perf script -F comm,tid,time,ip,sym` output."""
    frames, time = None, None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if frames is not None:
                    yield time, frames
                frames = None
            elif not line[0].isspace():
                fields = line.split()
                time = float(fields[2].rstrip(":"))
                frames = []
            elif frames is not None:
                parts = line.strip().split(" ", 1)
                if len(parts) == 2:
                    frames.append(parts[1].replace(" (inlined)", ""))
    if frames is not None:
        yield time, frames


def category(frames):
    def first(rules, frames):
        for name, needles in rules:
            if any(n in frame for frame in frames for n in needles):
                return name
        return None
    leaf = first(LEAF_RULES, frames[:1])
    if leaf:
        return leaf
    if frames and "memset" in frames[0] and any(z in f for f in frames[:6] for z in ZEROING):
        return "allocation zeroing"
    layer_frames = [f for f in frames if not any(h in f for h in SHARED_HELPERS)]
    return first(LAYER_RULES, layer_frames) or first(FALLBACK_RULES, frames) or "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("script", help="`perf script -F comm,tid,time,ip,sym` output")
    ap.add_argument("--marker", default="Trainer::step", help="a frame that only the timed runs reach")
    ap.add_argument("--skip", type=float, default=0.0, help="also leave out this many seconds after the marker (warm-up)")
    ap.add_argument("--top", type=int, default=0, help="also list the N commonest leaf symbols")
    args = ap.parse_args()
    all_samples = list(samples(args.script))
    starts = [t for t, s in all_samples if any(args.marker in f for f in s)]
    if not starts:
        sys.exit(f"no sample's stack contains {args.marker!r}; pass --marker")
    timed = [s for t, s in all_samples if t >= min(starts) + args.skip]
    shares = collections.Counter(category(s) for s in timed)
    print(f"{len(timed)} samples from {args.skip} s after the first {args.marker!r} (of {len(all_samples)})")
    print("| layer type | share |\n|---|---|")
    for name, count in shares.most_common():
        print(f"| {name} | {100 * count / len(timed):.1f}% |")
    if args.top:
        leaves = collections.Counter(s[0][:100] for s in timed if s)
        print()
        for leaf, count in leaves.most_common(args.top):
            print(f"{100 * count / len(timed):5.1f}%  {leaf}")


if __name__ == "__main__":
    main()

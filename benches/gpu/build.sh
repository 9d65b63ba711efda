#!/usr/bin/env bash
# Builds, on this machine, what the GPU check runs on a machine with an NVIDIA GPU: the bench
# cases and the device test suites with the `cuda` feature (cubecl's CUDA runtime loads the
# driver and NVRTC at run time, so it builds without CUDA installed). The stripped binaries go
# to target/gpu-check/, small enough to carry to that machine; run benches/gpu/check.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/gpu-check
mkdir -p "$out"

cargo build --release --features cuda -p bench-cases
cp target/release/bench-cases "$out/bench-cases"

# The test executables: cargo prints their paths with --message-format=json.
for spec in "tensor device" "nn device"; do
    set -- $spec
    exe=$(cargo test --release -p "$1" --features cuda --test "$2" --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    [ -n "$exe" ] || { echo "no test executable for $1/$2" >&2; exit 1; }
    cp "$exe" "$out/$1-$2"
done
strip "$out"/*
ls -l "$out"

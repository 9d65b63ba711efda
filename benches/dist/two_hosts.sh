#!/usr/bin/env bash
# Data-parallel training "across two machines" on one Linux machine, as root: two network
# namespaces, nodeA (10.77.0.2) and nodeB (10.77.0.3), each with its own network stack and
# host name, joined by veth pairs to a bridge (10.77.0.1) in the root namespace. Open MPI's
# launcher reaches them through a remote-shell agent that enters the namespace instead of
# ssh-ing into a host, and the ranks talk TCP over the veths (no shared memory, no loopback):
# what `mpirun -H host1,host2` does between real machines, minus the wire.
#
#   cargo build --release --features mpi --examples
#   sudo benches/dist/two_hosts.sh            # set up, run every check, tear down
#
# Checks: one rank per namespace; the ddp_check example (2 ranks = 1 process to 1e-4);
# `resnet train` for one epoch on the demo data; the all-reduce time of ResNet-50's gradients
# across the namespaces, against plain `mpirun -np 2` (shared memory, then TCP on loopback).
# Needs iproute2, util-linux (unshare) and Open MPI 4 (ORTE's `--mca plm_rsh_agent`).
# Env: BIN (default target/release), WORK (default a fresh temporary folder), KEEP=1 leaves
# the namespaces up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
SUBNET=10.77.0.0/24
NODES=(nodeA nodeB)

net_down() {
    for ns in "${NODES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
        ip link del "veth-$ns" 2>/dev/null || true
    done
    ip link del br-mpi 2>/dev/null || true
}

net_up() {
    net_down
    ip link add br-mpi type bridge
    ip addr add 10.77.0.1/24 dev br-mpi
    ip link set br-mpi up
    local i=2 ns
    for ns in "${NODES[@]}"; do
        ip netns add "$ns"
        ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
        ip link set "veth-$ns" master br-mpi up
        ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        i=$((i + 1))
    done
}

# Open MPI 4 calls its agent as `AGENT HOST orted ARGS...`, the arguments one command line for
# a remote shell (quoted), so the agent runs `sh -c "$*"` in HOST's namespace, in a private
# UTS namespace named after HOST (each "machine" has its own host name).
write_agent() {
    cat > "$WORK/nsrsh" <<'AGENT'
#!/bin/sh
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-l|-p|-i|-F) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1; shift
case "$host" in
    nodeA|10.77.0.2) ns=nodeA ;;
    nodeB|10.77.0.3) ns=nodeB ;;
    *) echo "nsrsh: unknown host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0"; eval "$1"' "$ns" "$*"
AGENT
    chmod +x "$WORK/nsrsh"
}

across() {
    timeout "$1" mpirun --allow-run-as-root --oversubscribe -H nodeA,nodeB -np 2 \
        --mca plm_rsh_agent "$WORK/nsrsh" \
        --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET" \
        -x NO_COLOR=1 -x RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}" "${@:2}"
}

# Bytes a namespace sent out of its eth0 (what the root side of its veth received).
sent() { cat "/sys/class/net/veth-$1/statistics/rx_bytes"; }
counted() {
    local a0 b0
    a0=$(sent nodeA)
    b0=$(sent nodeB)
    "$@"
    echo "== sent over the veths: nodeA $((($(sent nodeA) - a0) / 1000)) kB, nodeB $((($(sent nodeB) - b0) / 1000)) kB"
}

echo "== $(mpirun --version | head -1)"
write_agent
net_up
[ "${KEEP:-0}" = 1 ] || trap net_down EXIT

echo "== one rank per namespace"
across 120 sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname), $(ip -o -4 addr show eth0 | grep -o "10\.77[0-9./]*")"'

echo "== ddp_check: 2 ranks (one per namespace) against 1 process"
counted across 600 "$BIN/examples/ddp_check"

# The namespaces share the file system: rank 0 generates the demo data, and rank 1 reads the
# same path (on real machines, every host needs the data at the same path).
echo "== resnet train, one epoch on the demo data, 2 ranks"
counted across 1800 "$BIN/resnet" train --epochs 1 --image-size 32 --base-planes 8 --batch-size 32 \
    --workers 1 --demo-dir "$WORK/demo-data" --out "$WORK/run"

echo "== allreduce_time across the namespaces (TCP over veth and bridge)"
counted across 600 "$BIN/examples/allreduce_time"
echo "== allreduce_time, plain mpirun -np 2 (shared memory)"
timeout 600 mpirun --allow-run-as-root --oversubscribe -np 2 "$BIN/examples/allreduce_time"
echo "== allreduce_time, plain mpirun -np 2 over TCP on loopback"
timeout 600 mpirun --allow-run-as-root --oversubscribe -np 2 --mca btl tcp,self "$BIN/examples/allreduce_time"

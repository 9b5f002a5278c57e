#!/usr/bin/env bash
# Disks side by side (reference-vmm/benches/disk.rs): the minimal kernel and the
# busybox root disk booted from virtio-blk by reference-vmm, Cloud Hypervisor and
# Firecracker, interleaved round by round, in the nested real-KVM tier (a PVM
# host's guests have no user space to run dd in). Prints the medians and the
# per-round ratios (>= 1.0: reference-vmm is at least as good).
#
#   scripts/disk-bench.sh [PEERS_DIR]     # default ../shared/peers
#
# Peers are the release binaries found in PEERS_DIR: firecracker-v*, and
# cloud-hypervisor-v* only with HVKVM_DISK_CLOUD_HYPERVISOR=1 (v53.0 froze the
# nested tier's L1 on its first boot there, 2026-12-06); a missing one is said
# and skipped. HVKVM_DISK_ROUNDS (default 5) sets the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=$(readlink -f "${1:-../shared/peers}")
guests/build.sh minimal
exe=$(cargo bench --locked -p reference-vmm --bench disk --no-run --message-format json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    j = json.loads(l)
    if j.get("reason") == "compiler-artifact" and j["target"]["name"] == "disk" and j.get("executable"):
        print(j["executable"])')
vmm=$(readlink -f target/release/reference-vmm)
env=(HVKVM_DISK_ROUNDS="${HVKVM_DISK_ROUNDS:-5}")
files=(--file "$vmm" --file target/guests/minimal/vmlinux --file target/guests/busybox-root.img)
ch=
[ "${HVKVM_DISK_CLOUD_HYPERVISOR:-0}" = 1 ] &&
  ch=$(ls "$peers"/cloud-hypervisor-v* 2>/dev/null | grep -v provenance | head -n1 || true)
fc=$(ls "$peers"/firecracker-v* 2>/dev/null | grep -v provenance | head -n1 || true)
[ -n "$ch" ] && { env+=(HVKVM_PEER_CLOUD_HYPERVISOR="$ch"); files+=(--file "$ch"); }
[ -n "$fc" ] && { env+=(HVKVM_PEER_FIRECRACKER="$fc"); files+=(--file "$fc"); }
exec python3 scripts/nested.py run --timeout 1800 "${files[@]}" -- env "${env[@]}" "$exe" --bench

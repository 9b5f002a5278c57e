#!/usr/bin/env bash
# The main job: set up a fresh Debian 12 machine, build the minimal Linux guest
# and its busybox root disk (cached after the first run), and boot it with 4
# vCPUs from that disk (virtio-blk): every AP is started through
# StartVirtualProcessor, and the guest's user space prints how many CPUs are
# online, then powers off. The boot timeline and the exit/hypercall table are
# printed on stderr, and at the end how long each stage took.
#
# On a KVM whose guests have user space (hardware KVM) the boot runs here. On a
# PVM host, where guest user space cannot make system calls, the same boot runs
# in the nested real-KVM tier (scripts/nested.py: KVM-SVM in an L1 Linux under
# QEMU TCG).
#
# Extra arguments go to reference-vmm (e.g. --hyperv vtl2 boots target/guests/vtl2).
set -euo pipefail
cd "$(dirname "$0")/.."

stages=()
t=$SECONDS
stage() {
  stages+=("$(printf '%-34s %4d s' "$1" $((SECONDS - t)))")
  t=$SECONDS
}

scripts/setup.sh
stage "set-up (apt, cargo tools)"
kernel=target/guests/minimal/vmlinux
kernels=(minimal)
for a in "$@"; do
  if [ "$a" = vtl2 ]; then kernel=target/guests/vtl2/vmlinux; kernels+=(vtl2); fi
done
guests/build.sh "${kernels[@]}"
stage "guests (kernel, root disk)"
cargo build --quiet --release --locked -p reference-vmm
stage "cargo build --release"

# The guest writes to its root disk: boot a copy.
disk=target/demo/root.img
mkdir -p target/demo
cp --sparse=always "$(readlink -f target/guests/busybox-root.img)" "$disk"
vmm=(target/release/reference-vmm --kernel "$kernel" --disk "$disk" --vcpus 4 --timings --stats "$@")
log=target/demo/boot.log
runner=()
where="boot"
if [ -e /sys/module/kvm_pvm ]; then
  echo "demo: this /dev/kvm is PVM, whose guests' user space cannot make system calls: the boot runs in the nested real-KVM tier (KVM-SVM in an L1 under QEMU TCG)"
  python3 scripts/nested.py l1 >/dev/null
  stage "nested tier's L1 (Debian packages)"
  runner=(python3 scripts/nested.py run --timeout 300 --)
  where="boot (nested tier: L1 and guest)"
fi
echo "+ ${runner[*]} ${vmm[*]}"
set +e
"${runner[@]}" "${vmm[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
stage "$where"

if grep -q '^HVKVM-NPROC: 4' "$log" && grep -q '^HVKVM-ONLINE: 0-3' "$log"; then
  aps=$(grep -c 'started through StartVirtualProcessor' "$log" || true)
  echo "demo: user space on the root disk with 4 CPUs online ($aps APs started through StartVirtualProcessor)"
fi
case $status in
  0) echo "demo: the guest powered off (status 0)" ;;
  124) echo "demo: the boot did not finish in time (status 124)" ;;
  125) echo "demo: the nested tier itself failed (status 125): see the 'nested: L1 failure' line" ;;
  *) echo "demo: reference-vmm ended with status $status (1 VMM error, 2 usage, 3 guest reboot, 4 guest crash)" ;;
esac
echo "demo: stages"
printf '  %s\n' "${stages[@]}"
exit "$status"

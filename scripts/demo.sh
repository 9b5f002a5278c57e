#!/usr/bin/env bash
# The main job: set up a fresh Debian 12 machine, build the minimal Linux guest
# (cached after the first run), and boot it with 4 vCPUs. Every AP is started
# through StartVirtualProcessor; the boot timeline and the exit/hypercall table are
# printed on stderr.
#
# On hardware KVM the guest runs a busybox /init that prints its CPU count and
# powers off. On a PVM host (guest user space cannot make system calls) /init is a
# probe whose first instruction is ud2: the kernel reports it and reboots.
#
# Extra arguments go to reference-vmm (e.g. --hyperv vtl2 with target/guests/vtl2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
guests/build.sh minimal vtl2
cargo build --quiet --release -p reference-vmm
kernel=target/guests/minimal/vmlinux
init=target/guests/busybox.cpio
[ -e /sys/module/kvm_pvm ] && init=target/guests/probe.cpio
for a in "$@"; do [ "$a" = vtl2 ] && kernel=target/guests/vtl2/vmlinux; done
set -x
status=0
target/release/reference-vmm --kernel "$kernel" --initramfs "$init" --vcpus 4 --timings --stats "$@" || status=$?
set +x
case $status in
  0) echo "demo: the guest powered off (status 0)" ;;
  3) echo "demo: the guest rebooted (status 3)$([ -e /sys/module/kvm_pvm ] && echo ': expected on PVM, where /init is the ud2 probe and the kernel panics and reboots')" ;;
  *) echo "demo: reference-vmm ended with status $status (1 VMM error, 2 usage, 4 guest crash)" ;;
esac
exit $status

#!/usr/bin/env bash
# The main job: set up a fresh machine and run the crates' examples on the real
# /dev/kvm. (When reference-vmm lands, this boots a Linux guest instead.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --quiet --release -p hv-defs --example decode_hypercall
echo
cargo run --quiet --release -p hv-regs --example vp_registers

#!/usr/bin/env bash
# Installs everything the build, the tests and the coverage gate need on a fresh
# Debian 12 machine with a Rust toolchain. Safe to run again: it skips what is there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
# LLVM tools of the same major version as rustc's LLVM, for cargo-llvm-cov.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ ! -x "/usr/lib/llvm-${llvm_major}/bin/llvm-profdata" ]; then
  need_apt+=("llvm-${llvm_major}")
fi
command -v python3 >/dev/null || need_apt+=(python3)
# The nested real-KVM tier (scripts/nested.py): QEMU's TCG emulates AMD SVM.
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v objcopy >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

if ! cargo llvm-cov --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-llvm-cov"
  cargo install --locked cargo-llvm-cov
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-deny"
  cargo install --locked cargo-deny
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

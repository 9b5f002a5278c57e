#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: set-up, format, lints, the test
# guests (two Linux 6.12 kernels and their initramfs, built once and cached), the
# tests on the host's /dev/kvm under coverage (guest boots included), doc tests,
# docs, the per-crate coverage gate, the fuzz targets for a bounded time, and
# then every test executable again in the
# nested real-KVM tier (KVM-SVM in an L1 Linux under QEMU TCG, scripts/nested.py)
# with boots of Debian's stock cloud kernel to user space.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# KVM tests must fail loudly, never skip, when /dev/kvm is unusable.
if ! python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null; then
  echo "error: /dev/kvm cannot be opened read-write by $(id -un); the tests need KVM" >&2
  ls -l /dev/kvm >&2 || true
  exit 1
fi

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
export LLVM_PROFDATA="/usr/lib/llvm-${llvm_major}/bin/llvm-profdata"
export LLVM_COV="/usr/lib/llvm-${llvm_major}/bin/llvm-cov"

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny check licenses bans sources (advisories need the network's RustSec database: not checked)"
cargo deny --locked check licenses bans sources

step "hv-regs without its kvm feature (no kvm-ioctls)"
cargo clippy -p hv-regs --no-default-features --locked -- -D warnings

step "test guests (guests/build.sh: kernels and initramfs, cached by content hash)"
guests/build.sh minimal vtl2 debian

step "tests (cargo nextest under cargo llvm-cov), one crate at a time: each crate's coverage from its own tests"
# The crates are the keys of coverage_config.json (directories); every workspace
# member is there, so every test runs. Tests named nested_tier_* need guest user
# space with system calls, which a PVM host lacks: on such a host they run in the
# nested real-KVM tier below (which runs every test), not here.
filter=()
if [ -d /sys/module/kvm_pvm ]; then
  filter=(-E 'not test(/^nested_tier_/)')
  echo "PVM host: nested_tier_* tests run in the nested real-KVM tier only"
fi
cargo llvm-cov clean --workspace
rm -rf target/coverage && mkdir -p target/coverage
status=0
for dir in $(python3 -c 'import json; print(" ".join(json.load(open("coverage_config.json"))["crates"]))'); do
  pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)
  printf '\n-- %s (%s)\n' "$pkg" "$dir"
  cargo llvm-cov nextest --no-clean -p "$pkg" --locked --no-fail-fast "${filter[@]}" \
    --json --output-path "target/coverage/${dir//\//_}.json" || status=1
  cargo llvm-cov clean --profraw-only
done
[ "$status" = 0 ] || { echo "tests failed" >&2; exit 1; }

step "doc tests"
cargo test --workspace --doc --locked

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "coverage gate (coverage_config.json)"
python3 scripts/coverage_gate.py target/coverage coverage_config.json

step "cargo package (every published crate, built as crates.io would build it)"
# cargo verifies each crate against the others' tarballs through a local
# registry whose sources it unpacks under $CARGO_HOME/registry/src/-<hash>/
# and never unpacks again for the same name and version: a checkout at the
# same path that packaged 0.1.0 before would build against that stale copy.
# Drop our own crates' unpacked copies (only the local-registry ones).
for crate in $(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json,sys; print(" ".join(p["name"]+"-"+p["version"] for p in json.load(sys.stdin)["packages"]))'); do
    rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/"$crate"
    # The verify builds fingerprint a registry crate by name and version only.
    cargo clean --quiet -p "${crate%-*}"
done
cargo package --workspace --exclude hvkvm-mini-vmm --locked

step "fuzz (scripts/fuzz.sh: every cargo-fuzz target, 45 s each from its seeds)"
scripts/fuzz.sh 45

step "nested real-KVM tier (scripts/nested.py suite: KVM-SVM in an L1 under QEMU TCG)"
python3 scripts/nested.py suite

#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time from its
# seed corpus (fuzz/corpus/<target>); a crash, a failed assertion or a leak fails
# the run and leaves the input under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 45 s per target, as CI runs it
#   scripts/fuzz.sh 3600       # an hour per target
#   scripts/fuzz.sh 600 registers   # one target
#
# cargo fuzz builds with -Zsanitizer=address, a nightly flag; RUSTC_BOOTSTRAP=1
# lets the machine's stable toolchain accept it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-45}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build
for t in "${targets[@]}"; do
  # New inputs go to a scratch corpus; the seeds in the repository stay as they are.
  work=target/corpus/$t
  mkdir -p "$work"
  cp corpus/"$t"/* "$work"/
  echo "fuzz: $t for $secs s"
  log=target/$t.log
  status=0
  cargo fuzz run "$t" "$work" -- -max_total_time="$secs" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz: $t failed (status $status); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" || tail -n 3 "$log"
done
echo "fuzz: ${#targets[@]} targets, $secs s each, no crash"

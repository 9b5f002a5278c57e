#!/usr/bin/env python3
"""Per-crate line-coverage gate.

Reads the JSON export of `cargo llvm-cov` and `coverage_config.json`, computes each
crate's line coverage over that crate's own `src/` files only, and fails when a crate
is below its minimum or more than `ratchet` points above it (raise the minimum).
"""
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: coverage_gate.py COVERAGE_JSON CONFIG_JSON", file=sys.stderr)
        return 2
    report = json.load(open(sys.argv[1]))
    config = json.load(open(sys.argv[2]))
    root = os.path.dirname(os.path.abspath(sys.argv[2]))
    ratchet = float(config.get("ratchet", 1.0))
    files = report["data"][0]["files"]
    failed = False
    print(f"{'crate':<16}{'lines':>8}{'covered':>9}{'coverage':>10}{'minimum':>9}")
    for crate, minimum in sorted(config["crates"].items()):
        prefix = os.path.join(root, crate, "src") + os.sep
        count = covered = 0
        for f in files:
            if f["filename"].startswith(prefix):
                count += f["summary"]["lines"]["count"]
                covered += f["summary"]["lines"]["covered"]
        if count == 0:
            print(f"{crate}: no covered source files found under {prefix}", file=sys.stderr)
            failed = True
            continue
        pct = 100.0 * covered / count
        verdict = ""
        if pct < minimum:
            verdict = f"  FAIL: below the minimum {minimum}"
            failed = True
        elif pct > minimum + ratchet:
            verdict = f"  FAIL: more than {ratchet} above {minimum}; raise it to {int(pct)}"
            failed = True
        print(f"{crate:<16}{count:>8}{covered:>9}{pct:>9.2f}%{minimum:>9}{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

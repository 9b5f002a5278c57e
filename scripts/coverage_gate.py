#!/usr/bin/env python3
"""Per-crate line-coverage gate.

Reads one `cargo llvm-cov` JSON export per crate (COVERAGE_DIR/<dir>.json, `/` in
the directory written as `_`), each from a run of that crate's own tests only, and
`coverage_config.json`; computes each crate's line coverage over its own `src/`
files, and fails when a crate is below its minimum or more than `ratchet` points
above it (raise the minimum). Lines another crate's tests happen to reach do not
count.
"""
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: coverage_gate.py COVERAGE_DIR CONFIG_JSON", file=sys.stderr)
        return 2
    config = json.load(open(sys.argv[2]))
    root = os.path.dirname(os.path.abspath(sys.argv[2]))
    ratchet = float(config.get("ratchet", 1.0))
    failed = False
    print(f"{'crate':<20}{'lines':>8}{'covered':>9}{'coverage':>10}{'minimum':>9}")
    for crate, minimum in sorted(config["crates"].items()):
        prefix = os.path.join(root, crate, "src") + os.sep
        path = os.path.join(sys.argv[1], crate.replace("/", "_") + ".json")
        if not os.path.exists(path):
            print(f"{crate}: no coverage report {path}", file=sys.stderr)
            failed = True
            continue
        files = json.load(open(path))["data"][0]["files"]
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
        print(f"{crate:<20}{count:>8}{covered:>9}{pct:>9.2f}%{minimum:>9}{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

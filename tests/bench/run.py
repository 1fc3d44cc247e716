#!/usr/bin/env python3
"""marllb benchmarks: one command, a printed table, a flat JSON of figures.

    python tests/bench/run.py [--only GROUP[,GROUP]] [--json FILE]

Each ``tests/bench/bench_<group>.py`` module defines ``GROUP = "<group>"`` and
``run(progress) -> dict[str, float]`` (a flat mapping of named figures; the
issues fix the key names).  Figures are medians of repeated measurements
taken in this one run; compare ratios, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

from marllb.daemon.fsutil import atomic_write_text

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, object]:
    groups = {}
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        groups[mod.GROUP] = mod
    return groups


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", help="comma-separated groups to run (default: all)")
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    groups = discover()
    wanted = args.only.split(",") if args.only else list(groups)
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        print(f"run.py: unknown group(s) {', '.join(unknown)}; have: {', '.join(groups)}",
              file=sys.stderr)
        return 2
    results: dict[str, object] = {}
    rows = []
    failed = []
    for g in wanted:
        t0 = time.perf_counter()
        print(f"[{g}] running ...", file=sys.stderr, flush=True)
        try:
            figs = groups[g].run(lambda msg, g=g: print(f"[{g}] {msg}", file=sys.stderr,
                                                        flush=True))
        except Exception as e:  # noqa: BLE001 - one broken group must not lose the others
            print(f"[{g}] FAILED: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            failed.append(g)
            continue
        print(f"[{g}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        for k, v in figs.items():
            results[k] = v
            rows.append((g, k, v))
    w = max((len(k) for _, k, _ in rows), default=10)
    print(f"{'group':<10} {'figure':<{w}} value")
    for g, k, v in rows:
        print(f"{g:<10} {k:<{w}} {fmt(v)}")
    if args.json:
        results["_machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if failed:
        print(f"run.py: group(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

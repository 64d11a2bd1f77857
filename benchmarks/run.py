"""`make bench`: run every CPU benchmark in turn and print what each measured.

Each benchmark module exposes ``main()``; the GPU scripts (gpu_*.py) need a lent
accelerator and are run by hand, so they are not listed here.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = ("bench_teacher", "bench_core", "bench_levers", "bench_eval", "bench_orchestrator",
              "bench_results")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise
            print(f"== {name}: not present, skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            module.main() if name not in ("bench_core", "bench_levers") else module.main([])
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            failed.append(name)
            print(f"== {name} FAILED: {exc!r}", flush=True)
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

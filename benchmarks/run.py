"""``make bench``: run every benchmark in turn (each prints its own table)."""

from __future__ import annotations

import importlib
import sys

BENCHES = ["preprocess", "train_gru4rec", "daily", "kernels", "kernels_e2e", "serve_load"]


def main() -> int:
    only = sys.argv[1:] or BENCHES
    for name in only:
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            print(f"benchmarks.{name}: not available ({exc})")
            continue
        print(f"\n##### benchmarks.{name}", flush=True)
        sys.argv = [f"benchmarks.{name}"]
        mod.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

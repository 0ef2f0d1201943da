"""``python -m rayrec.jobs.codegen --config jobs/configs/drnn_rsc15.yaml [k=v ...]``
Prints the network that CodeGen (seed 004, Algorithm 1) generates from a DRNN training
config's ``model.states``, ``model.layers``, ``model.shortcut`` and ``model.history``: one
line per block with its parameter count, for the catalogue of ``data.path`` (its
``manifest.json``, written by the preprocess job).  Nothing is trained.  A bad structure
exits 2 naming the key (``model.layers[2].activation``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rayrec.jobs import _cli
from rayrec.platform.training.config import TrainJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    from rayrec.models import layers as codegen

    args = _cli.parser("codegen", __doc__, TrainJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(TrainJobConfig, args, "codegen")
    m = cfg.model
    if getattr(m, "name", None) != "drnn":
        print(f"rayrec.jobs.codegen: error: model.name={m.name!r}: CodeGen generates drnn networks only",
              file=sys.stderr)
        return 1
    manifest = Path(cfg.data.path) / "manifest.json"
    if not manifest.is_file():
        print(f"rayrec.jobs.codegen: error: data.path={cfg.data.path}: no manifest.json (run the "
              "preprocess job first; the item count sizes the item tables)", file=sys.stderr)
        return 1
    n_items = int(json.loads(manifest.read_text())["items"]["n_items"])
    print(codegen.describe(m.states, m.units, m.activations, m.shortcut, m.history, n_items))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m rayrec.jobs.preprocess --config jobs/configs/preprocess_rsc15.yaml [k=v ...]``

Reads a public log format, validates (bad rows to a quarantine file with reasons),
sessionizes, filters, indexes items and writes the named split as Parquet with a
manifest.  See :mod:`rayrec.platform.preprocessing.pipeline`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rayrec.jobs import _cli
from rayrec.platform.preprocessing.config import PreprocessJobConfig
from rayrec.platform.preprocessing.pipeline import decide_ray, preflight, run_preprocess
from rayrec.platform.preprocessing.readers import ReaderError
from rayrec.platform.preprocessing.validate import ValidationFailed


def main(argv: Sequence[str] | None = None) -> int:
    args = _cli.parser("preprocess", __doc__, PreprocessJobConfig).parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(PreprocessJobConfig, args, "preprocess")
    try:
        preflight(cfg)  # files, column maps, item_index_from: before Ray's start-up cost
        cfg = decide_ray(cfg)
        if cfg.ray.use_ray:
            from rayrec.platform.runtime import init_ray

            init_ray(cfg.ray.address, cfg.ray.num_cpus)
        run_preprocess(cfg)
    except (ReaderError, ValidationFailed, ValueError, FileExistsError) as exc:
        print(f"rayrec.jobs.preprocess: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

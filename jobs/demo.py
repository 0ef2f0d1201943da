"""``python -m rayrec.jobs.demo`` (what ``make demo`` runs)

The main pipeline on the embedded defaults (local Ray, local files):

1. preprocess ``../shared/data/rsc15-100k`` on Ray Data when present, otherwise a
   built-in deterministic synthetic session log (said so loudly);
2. evaluate the classic baselines under the ``next_item`` protocol;
3. train GRU4Rec (reference config, shortened) with Ray Train and evaluate it;
4. print one table;
5. serve the trained GRU4Rec with Ray Serve on 127.0.0.1, send one request, print the
   request and the answer, and show the command that keeps the app running.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field
from rayrec.jobs import _cli

from rayrec.platform.config import StrictModel

REPO_DATA = Path("../shared/data/rsc15-100k")


class DemoJobConfig(StrictModel):
    data_dir: str = str(REPO_DATA)
    """Where the RSC15 sample lives; the synthetic generator is used when it is absent."""
    out_dir: str = "outputs/demo"
    synthetic_events: int = Field(120_000, ge=1000)
    baselines: list[str] = Field(default_factory=lambda: ["pop", "spop", "item_knn"])
    train_gru4rec: bool = True
    gru4rec_epochs: int = Field(2, ge=1)
    num_cpus: int = 4
    serve: bool = True
    serve_port: int = 8000


def _step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _cli.parser("demo", "run the main pipeline on embedded defaults").parse_args(_cli.argv_or_sys(argv))
    cfg = _cli.load(DemoJobConfig, args, "demo")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rayrec.platform.config import load_config
    from rayrec.platform.evaluation.runner import evaluate_baselines, format_table
    from rayrec.platform.preprocessing.config import PreprocessJobConfig
    from rayrec.platform.preprocessing.pipeline import run_preprocess
    from rayrec.platform.runtime import init_ray

    t0 = time.perf_counter()
    _step("starting an embedded local Ray")
    init_ray(None, cfg.num_cpus, log_to_driver=False)
    out = Path(cfg.out_dir)
    data_dir = Path(cfg.data_dir)
    _step("1/5 preprocess on Ray Data")
    if (data_dir / "yoochoose-clicks-100k_train_full.txt").is_file():
        print(f"using the public RSC15 sample in {data_dir}")
        overrides = [f"source.paths.{n}={data_dir}/yoochoose-clicks-100k_{n}.txt" for n in
                     ("train_full", "test", "train_tr", "train_valid")]
        pcfg = load_config(
            PreprocessJobConfig, Path(__file__).parent / "configs" / "preprocess_rsc15.yaml",
            overrides + [f"output.path={out / 'data'}"],
        )
        dataset = "rsc15-100k"
    else:
        from rayrec.platform.preprocessing.synthetic import generate_events, write_rsc15_style

        print(f"NOTE: {data_dir} not found: using the built-in SYNTHETIC session generator "
              f"({cfg.synthetic_events} events, power-law popularity, Markov sequential structure)")
        src = write_rsc15_style(generate_events(cfg.synthetic_events, n_items=3000, seed=0, days=14), out / "synthetic.tsv")
        pcfg = load_config(
            PreprocessJobConfig, None,
            ["source.format=rsc15_prepared", f"source.path={src}", "split.test_days=1",
             f"output.path={out / 'data'}"],
        )
        dataset = "synthetic"
    manifest = run_preprocess(pcfg)
    root = str(out / "data")

    _step("2/5 classic baselines, next_item protocol (full ranking, conservative ties)")
    results = evaluate_baselines(root, "train_full", "test", cfg.baselines)

    if cfg.train_gru4rec:
        try:
            from rayrec.jobs.train import run_training_for_demo
        except ImportError:
            print("GRU4Rec training is not available in this build; skipping")
        else:
            _step(f"3/5 GRU4Rec on Ray Train ({cfg.gru4rec_epochs} epochs of the reference config)")
            res, ckpt = run_training_for_demo(root, out / "runs", cfg.gru4rec_epochs)
            results["gru4rec"] = res
            print(f"checkpoint: {ckpt}")

    _step(f"4/5 results on {dataset}: train_full -> test "
          f"({manifest['split']['splits']['test']['events']} test events)")
    print(format_table(results))
    if cfg.serve and cfg.train_gru4rec and results.get("gru4rec"):
        _step("5/5 Ray Serve: the session recommender on the trained checkpoint")
        from ray import serve
        from rayrec.serve_apps.recommender import demo_request

        run_dir = str((out / "runs" / "demo-gru4rec").resolve())
        state = (out / "serve").resolve()
        demo_request(
            {"model_dir": run_dir, "model": "latest", "session_store": f"sqlite:///{state}/sessions.db",
             "event_log_dir": str(state / "events")},
            k=10, port=cfg.serve_port,
        )
        serve.shutdown()
        print("(the demo stopped the app; the command above keeps it running)")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``rayrec.jobs.tune``: Ray Tune over any rayrec training config.

Each trial is one training run of the model in the base config, with the trial's
sampled point applied as dotted overrides (``make_train_config``), run in-process in
the trial (the 1-worker loop; ``scaling.num_workers`` is forced to 0 inside trials).
Every epoch the trial reports the validation metrics plus ``fitness`` (seed 004:
accuracy + 1 / (1 + loss)) with a checkpoint, so PBT/PB2 can exploit and restore weights
and optimiser state.  The objective is computed on the validation split only; the test
split is touched once, by :func:`final_evaluation` of the best configuration.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from rayrec.models import registry
from rayrec.platform.config import ConfigError, StrictModel, apply_overrides, load_config
from rayrec.platform.tuning.gentune import fitness
from rayrec.platform.tuning.space import Gene, check_space_keys, make_train_config

Method = Literal["random", "grid", "asha", "pbt", "pb2", "gentune"]


class GenTuneConfig(StrictModel):
    population_size: int = Field(8, ge=2)
    generations: int = Field(3, ge=0)
    p_c: float = Field(0.6, ge=0, le=1)
    p_m: float = Field(0.3, ge=0, le=1)
    elitism: bool = True


class PBTConfig(StrictModel):
    perturbation_interval: int = Field(1, ge=1)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)


class TuneRunConfig(StrictModel):
    name: str = "tune"
    storage_path: str = "runs/tune"


class TuneJobConfig(StrictModel):
    base_config: str
    """A training YAML (e.g. jobs/configs/gru4rec_rsc15.yaml)."""
    base_overrides: list[str] = Field(default_factory=list)
    space: dict[str, Gene]
    method: Method = "random"
    num_samples: int = Field(8, ge=1)
    """Trials (random/grid repeats/asha/pbt/pb2); GenTune's budget comes from its own config."""
    metric: str = "fitness"
    accuracy_metric: str = "recall@20"
    mode: Literal["max", "min"] = "max"
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    seed: int = 0
    gentune: GenTuneConfig = Field(default_factory=GenTuneConfig)
    pbt: PBTConfig = Field(default_factory=PBTConfig)
    run: TuneRunConfig = Field(default_factory=TuneRunConfig)
    final_train_split: str | None = "train_full"
    final_test_split: str | None = "test"
    """After the search: retrain the best config on this split, evaluate once on the test split."""
    final_epochs: int | None = Field(None, ge=1)
    """``train.epochs`` of the final retrain (None: the trials' epochs). Short trials rank
    configurations; the winner is then trained as long as the default config is."""

    @model_validator(mode="after")
    def _check(self) -> TuneJobConfig:
        if not self.space:
            raise ValueError("space: give at least one dotted key to search")
        if self.method == "grid" and any(g.type != "choice" for g in self.space.values()):
            bad = [k for k, g in self.space.items() if g.type != "choice"]
            raise ValueError(f"method grid needs choice genes; not: {bad}")
        return self


#: what every trial reports besides its data family's metrics (``family.metric_names``)
REPORTED = {"loss", "epoch", "fitness", "examples", "examples_per_s", "epoch_s", "world_size"}


def _spec_and_family(base: dict[str, Any]):
    from rayrec.platform.training.families import family_of

    spec = registry.get(make_train_config(base, {}).model.name)
    return spec, family_of(spec)


def base_dict(cfg: TuneJobConfig) -> dict[str, Any]:
    data = yaml.safe_load(Path(cfg.base_config).read_text(encoding="utf-8")) or {}
    data = apply_overrides(data, cfg.base_overrides)
    # trials run the loop in-process, with checkpoints (PBT restores from them)
    data = apply_overrides(data, {"ray.use_ray": False, "run.checkpoint": True})
    # one torch thread per CPU the trial holds: the base config's cpus_per_worker (2 for a
    # lone run) would put 2 OpenMP threads per trial on max_concurrent trials and oversubscribe
    # the cores; spinning OpenMP workers then slow every trial several-fold
    data = apply_overrides(data, {"scaling.torch_threads": max(1, int(cfg.cpus_per_trial))})
    path = data.get("data", {}).get("path")
    if path and "://" not in path:
        data["data"]["path"] = os.path.abspath(path)
    return data


def preflight(cfg: TuneJobConfig) -> dict[str, Any]:
    """Reject bad spaces/metrics before any trial starts (each names the key)."""
    from rayrec.platform.training.config import TrainJobConfig

    base = base_dict(cfg)
    check_space_keys(base, cfg.space, TrainJobConfig)
    tcfg = make_train_config(base, {})
    if not tcfg.data.valid_split:
        raise ConfigError("base config: data.valid_split is required (tuning objectives use the validation split)")
    if tcfg.data.valid_split == cfg.final_test_split or tcfg.data.valid_split == tcfg.data.test_split:
        raise ConfigError(
            f"base config: data.valid_split={tcfg.data.valid_split!r} is the test split; tune on a "
            "validation split (e.g. train_tr -> train_valid) so the test split is touched once"
        )
    _, family = _spec_and_family(base)
    _check_metrics(cfg, REPORTED | set(family.metric_names(tcfg.eval.ks)))
    return base


def _check_metrics(cfg: TuneJobConfig, metrics: set[str]) -> None:
    for name, m in (("metric", cfg.metric), ("accuracy_metric", cfg.accuracy_metric)):
        if m not in metrics:
            raise ConfigError(f"{name}: the trainable never reports {m!r}; it reports {sorted(metrics)}")


def trainable(config: dict[str, Any]) -> None:
    """One Tune trial: the one training loop on the sampled config, in the trial's process,
    reporting every epoch with a checkpoint (restored weights and optimiser state for PBT)."""
    from rayrec.platform.training.loop import WorkerContext, train_worker

    meta = config["__rayrec__"]
    registry.import_modules(meta.get("model_modules", []))  # plug-in models of the driver
    point = {k: v for k, v in config.items() if k != "__rayrec__"}
    job = make_train_config(meta["base"], point)
    _, family = _spec_and_family(meta["base"])
    data = family.load(job, with_valid=True)
    restore, report = _trial_io(point, meta["accuracy_metric"])
    train_worker(job, WorkerContext(0, 1, report, restore, data, lambda _m: None))


HISTORY_FILE = "rayrec_history.jsonl"


def _trial_io(point: dict[str, Any], acc_key: str):
    """A trial's restore directory (its Tune checkpoint, unpacked; None on a fresh start) and
    the ``report(metrics, checkpoint_dir)`` the training loop calls every epoch: numeric
    metrics and ``fitness`` (seed 004: accuracy + 1 / (1 + loss)) go to Tune with the
    checkpoint and to the trial's history file."""
    from ray import tune

    restore = None
    ck = tune.get_checkpoint()
    if ck is not None:
        restore = tempfile.mkdtemp(prefix="rayrec-tune-restore-")
        ck.to_directory(restore)
    history = _history_writer(point)

    def report(metrics: dict[str, Any], ck_dir: str | None) -> None:
        out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        out["fitness"] = fitness(out.get(acc_key, 0.0), out["loss"])
        history(out)
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(ck_dir) if ck_dir else None)

    return restore, report


def _history_writer(point: dict[str, Any]):
    """Appends every reported epoch, with the hyper-parameters it ran under, to
    ``<trial dir>/rayrec_history.jsonl``.  Tune rewrites a PBT trial's ``result.json`` when it
    restores it from another trial's checkpoint (rows go missing); this file keeps the whole
    sequence, so the learning-rate schedule PBT found can be plotted as it happened."""
    from ray import tune

    path = Path(tune.get_context().get_trial_dir()) / HISTORY_FILE
    hp = {k: v for k, v in point.items() if isinstance(v, (int, float, str))}

    def write(metrics: dict[str, Any]) -> None:
        row = {"time": time.time(), **metrics, **{f"config.{k}": v for k, v in hp.items()}}
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    return write


def _tune_domain(gene: Any):
    from ray import tune

    if gene.type == "float":
        return tune.uniform(gene.low, gene.high)
    if gene.type == "logfloat":
        return tune.loguniform(gene.low, gene.high)
    if gene.type == "int":
        return tune.randint(gene.low, gene.high + 1)
    if gene.type == "choice":
        return tune.choice(gene.values)
    combos = _layer_combos(gene)
    if combos is not None:  # a choice, so the search's seeded random state draws it too
        return tune.choice(combos)
    return tune.sample_from(lambda _spec, g=gene: g.sample(__import__("numpy").random.default_rng()))


def _layer_combos(gene: Any, limit: int = 20_000) -> list[list[int]] | None:
    """Every layer list of a ``layers`` gene, repeated so that a uniform choice over the list
    has ``LayersGene.sample``'s distribution (depth uniform, then each size uniform); None when
    the list would exceed ``limit`` entries."""
    import itertools

    s = len(gene.sizes)
    depths = range(gene.min_layers, gene.max_layers + 1)
    if sum(s ** gene.max_layers for _ in depths) > limit:
        return None
    out: list[list[int]] = []
    for n in depths:
        for combo in itertools.product(gene.sizes, repeat=n):
            out.extend([list(combo)] * s ** (gene.max_layers - n))
    return out


def run_tune(cfg: TuneJobConfig, log=print) -> dict[str, Any]:
    from ray import tune
    from ray.tune import CheckpointConfig, RunConfig, TuneConfig
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from rayrec.platform.runtime import init_ray
    from rayrec.platform.tuning.gentune import GenTuneSearcher

    base = preflight(cfg)
    init_ray(None, None)
    meta = {"base": base, "accuracy_metric": cfg.accuracy_metric, "model_modules": registry.plugin_modules()}
    storage = cfg.run.storage_path if "://" in cfg.run.storage_path else os.path.abspath(cfg.run.storage_path)
    epochs = make_train_config(base, {}).train.epochs
    param_space: dict[str, Any] = {"__rayrec__": meta}
    search_alg = None
    scheduler = None
    num_samples = cfg.num_samples
    keep = 2
    if cfg.method == "gentune":
        g = cfg.gentune
        search_alg = GenTuneSearcher(dict(cfg.space), cfg.metric, cfg.mode, g.population_size,
                                     g.generations, g.p_c, g.p_m, g.elitism, cfg.seed)
        num_samples = -1  # until the searcher says FINISHED
    elif cfg.method == "grid":
        from ray import tune as _t

        param_space.update({k: _t.grid_search(g.values) for k, g in cfg.space.items()})
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        param_space.update({k: _tune_domain(g) for k, g in cfg.space.items()})
        # seeded draws: the same config gives the same trials. Tune does not apply
        # max_concurrent_trials to a BasicVariantGenerator passed in: it is set below.
        search_alg = BasicVariantGenerator(random_state=cfg.seed)
    if cfg.method == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2)
    max_concurrent = cfg.max_concurrent
    if cfg.method in ("pbt", "pb2"):
        keep = None  # PBT restores exploited trials from any checkpoint: keep all
        # the whole population must run side by side to be compared; size cpus_per_trial so
        # num_samples * cpus_per_trial fits the cluster
        max_concurrent = max(cfg.max_concurrent, num_samples)
        if cfg.method == "pbt":
            scheduler = PopulationBasedTraining(
                time_attr="epoch", perturbation_interval=cfg.pbt.perturbation_interval, synch=True,
                quantile_fraction=cfg.pbt.quantile_fraction,
                resample_probability=cfg.pbt.resample_probability,
                hyperparam_mutations={k: _tune_domain(g) for k, g in cfg.space.items()},
            )
        else:
            from ray.tune.schedulers.pb2 import PB2

            bounds = {k: [g.low, g.high] for k, g in cfg.space.items() if g.type in ("float", "logfloat", "int")}
            if len(bounds) != len(cfg.space):
                raise ConfigError("method pb2 needs numeric genes only (float, logfloat, int)")
            scheduler = PB2(time_attr="epoch", perturbation_interval=cfg.pbt.perturbation_interval, synch=True,
                            quantile_fraction=cfg.pbt.quantile_fraction, hyperparam_bounds=bounds)
    if search_alg is not None and cfg.method != "gentune":
        search_alg.max_concurrent = max_concurrent
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cfg.cpus_per_trial}),
        param_space=param_space,
        tune_config=TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=num_samples, search_alg=search_alg,
            scheduler=scheduler, max_concurrent_trials=max_concurrent,
            # short folder names: the default puts the whole (nested) config in them
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=cfg.metric, mode=cfg.mode, scope="all")
    best_point = {k: v for k, v in best.config.items() if k != "__rayrec__"}
    trials = []
    for r in results:
        if r.metrics is None:
            continue
        trials.append({"trial": Path(r.path).name, "config": {k: v for k, v in r.config.items() if k != "__rayrec__"},
                       **{k: r.metrics.get(k) for k in ("epoch", cfg.metric, cfg.accuracy_metric, "loss")}})
    out_dir = Path(storage) / cfg.run.name
    best_cfg = make_train_config(base, best_point)
    best_yaml = out_dir / "best_config.yaml"
    best_yaml.write_text(yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    summary = {"method": cfg.method, "metric": cfg.metric, "mode": cfg.mode,
               "accuracy_metric": cfg.accuracy_metric, "n_trials": len(trials), "best_point": best_point,
               "best_metric": best.metrics.get(cfg.metric), "best_config_yaml": str(best_yaml),
               "trials": trials}
    if cfg.method == "gentune":
        summary["gentune_best_fitness"] = search_alg.state.best_fit
        summary["gentune_history"] = search_alg.state.history
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"{cfg.method}: {len(trials)} trials; best {cfg.metric}={summary['best_metric']:.4f} at {best_point}")
    log(f"best configuration written to {best_yaml} (runs as is: python -m rayrec.jobs.train -c {best_yaml})")
    return summary


def final_evaluation(best_yaml: str, train_split: str, test_split: str, storage: str, log=print,
                     epochs: int | None = None) -> dict[str, Any]:
    """Retrain the best config on ``train_split`` (for ``epochs``, default as in the YAML) and
    evaluate it ONCE on ``test_split``."""
    from rayrec.platform.training.config import TrainJobConfig
    from rayrec.platform.training.trainer import fit

    cfg = load_config(TrainJobConfig, best_yaml, [f"data.train_split={train_split}",
                                                  f"data.valid_split={test_split}",
                                                  f"run.storage_path={storage}", "run.name=final",
                                                  "ray.use_ray=false", "eval.every=1000000",
                                                  *([f"train.epochs={epochs}"] if epochs else [])])
    res = fit(cfg, log=log)
    return {k: v for k, v in res.metrics.items() if isinstance(v, (int, float, str))}


"""GenTune (seed 004, Algorithm 2): operators, fitness, reproducibility, save/restore."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from rayrec.platform.tuning.gentune import GenTuneSearcher, GenTuneState, fitness
from rayrec.platform.tuning.space import Gene

SPACE_SPEC = {
    "optim.lr": {"type": "logfloat", "low": 0.01, "high": 0.5},
    "optim.momentum": {"type": "float", "low": 0.0, "high": 0.5},
    "loss.n_sample": {"type": "int", "low": 0, "high": 4096},
    "loss.name": {"type": "choice", "values": ["cross-entropy", "bpr-max", "top1-max"]},
    "model.layers": {"type": "layers", "min_layers": 1, "max_layers": 3, "sizes": [64, 100, 200]},
}


def _space():
    ta = TypeAdapter(Gene)
    return {k: ta.validate_python(v) for k, v in SPACE_SPEC.items()}


def _type_ok(key, value):
    return {"optim.lr": float, "optim.momentum": float, "loss.n_sample": int, "loss.name": str,
            "model.layers": list}[key] is type(value)


def test_fitness_formula_matches_the_paper():
    assert fitness(0.5, 1.0) == pytest.approx(0.5 + 1 / 2)
    assert fitness(0.0, 0.0) == pytest.approx(1.0)
    assert fitness(0.7, 3.0) == pytest.approx(0.95)
    # lower loss and higher accuracy both raise fitness
    assert fitness(0.6, 1.0) > fitness(0.5, 1.0) and fitness(0.5, 0.5) > fitness(0.5, 1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rounds=st.integers(1, 20))
def test_operators_keep_every_gene_in_domain_and_type(seed, rounds):
    space = _space()
    s = GenTuneState(space, population_size=4, generations=1, seed=seed)
    a, b = s.population[0], s.population[1]
    for _ in range(rounds):
        a, b = s.crossover(a, b)
        a, b = s.mutate(a), s.mutate(b)
        for c in (a, b):
            for k, v in c.items():
                assert space[k].contains(v), (k, v)
                assert _type_ok(k, v), (k, type(v))


def _drive(searcher: GenTuneSearcher, score, max_trials=200, stop_after=None):
    """Run the searcher like Tune would (sequentially); returns evaluated configs."""
    seen = []
    n = 0
    while n < max_trials:
        tid = f"t{n}"
        cfg = searcher.suggest(tid)
        if cfg == GenTuneSearcher.FINISHED:
            break
        assert cfg is not None  # sequential: never blocked
        searcher.on_trial_complete(tid, {"fitness": score(cfg)})
        seen.append(cfg)
        n += 1
        if stop_after is not None and n == stop_after:
            return seen, False
    return seen, True


def _score(cfg):
    return -abs(np.log(cfg["optim.lr"]) - np.log(0.1)) - abs(cfg["optim.momentum"] - 0.2) + 0.001 * len(cfg["model.layers"])


def test_seeded_run_is_reproducible_and_improves():
    runs = []
    for _ in range(2):
        s = GenTuneSearcher(_space(), population_size=6, generations=4, p_c=0.7, p_m=0.4, seed=3)
        seen, done = _drive(s, _score)
        assert done
        runs.append((seen, s.state.best_fit, s.state.best))
    assert runs[0] == runs[1]
    seen, best_fit, best = runs[0]
    first_gen = max(_score(c) for c in seen[:6])
    assert best_fit >= first_gen  # elitism: the best is never lost
    assert best_fit == pytest.approx(max(_score(c) for c in seen))
    assert len(seen) > 6  # later generations evaluated changed chromosomes


def test_only_changed_chromosomes_are_reevaluated():
    s = GenTuneSearcher(_space(), population_size=4, generations=3, p_c=0.0, p_m=0.0, seed=1)
    seen, done = _drive(s, _score)
    assert done and len(seen) == 4  # nothing crossed or mutated: no new trials


def test_save_restore_resumes_mid_run(tmp_path):
    full = GenTuneSearcher(_space(), population_size=6, generations=3, seed=11)
    seen_full, _ = _drive(full, _score)
    part = GenTuneSearcher(_space(), population_size=6, generations=3, seed=11)
    seen_a, done = _drive(part, _score, stop_after=9)
    assert not done
    path = tmp_path / "gentune.json"
    part.save(str(path))
    json.loads(path.read_text())  # JSON, not pickle
    resumed = GenTuneSearcher(_space(), population_size=6, generations=3, seed=999)
    resumed.restore(str(path))
    seen_b, done = _drive(resumed, _score)
    assert done
    assert seen_a + seen_b == seen_full
    assert resumed.state.best_fit == full.state.best_fit


def test_concurrent_suggest_waits_for_the_generation():
    s = GenTuneSearcher(_space(), population_size=2, generations=2, p_c=1.0, p_m=1.0, seed=0)
    a, b = s.suggest("a"), s.suggest("b")
    assert a is not None and b is not None
    assert s.suggest("c") is None  # generation 0 still running
    s.on_trial_complete("a", {"fitness": 1.0})
    assert s.suggest("c") is None
    s.on_trial_complete("b", None, error=True)  # an errored trial counts as -inf
    nxt = s.suggest("c")
    assert nxt is not None and s.state.generation == 1


@pytest.mark.parametrize(
    "spec, msg",
    [
        ({"type": "float", "low": 1.0, "high": 1.0}, "empty domain"),
        ({"type": "int", "low": 5, "high": 2}, "empty domain"),
        ({"type": "choice", "values": []}, "empty domain"),
        ({"type": "logfloat", "low": 0.0, "high": 1.0}, "low > 0"),
        ({"type": "layers", "sizes": []}, "empty domain"),
    ],
)
def test_empty_domains_are_rejected(spec, msg):
    with pytest.raises(ValidationError, match=msg):
        TypeAdapter(Gene).validate_python(spec)


def test_bad_gentune_parameters():
    with pytest.raises(ValueError, match="even number"):
        GenTuneState(_space(), population_size=5)
    with pytest.raises(ValueError, match="p_m"):
        GenTuneState(_space(), population_size=4, p_m=1.5)

"""GenTune: the genetic hyper-parameter search of seed 004 (Algorithm 2), as a Ray Tune Searcher.

Algorithm 2 (seed 004, "Model Tuning")::

    tau = 0; P(tau) = GeneratePopulation(); maxFit, best = max over P(tau)
    while tau < N and the user does not interrupt:
        randomShuffle(P(tau))
        for i in 1 .. |P(tau)| / 2:
            c1, c2 = P(tau)[2i - 1], P(tau)[2i];  r1, r2, r3 ~ U[0, 1]
            if r1 < p_c: crossover(c1, c2)
            if r2 < p_m: mutate(c1)
            if r3 < p_m: mutate(c2)
            if r1 < p_c or r2 < p_m: maxFit = max(getFitness(c1), maxFit); best = argmax
            if r1 < p_c or r3 < p_m: maxFit = max(getFitness(c2), maxFit); best = argmax
        tau++

with ``fit = accuracy + 1 / (1 + loss)``.  Only chromosomes changed by crossover or
mutation are evaluated again (each evaluation is one Tune trial); the others keep
their fitness.  The algorithm itself has no selection step: changed chromosomes
replace their parents.  "The best kept" (elitism, on by default) re-inserts the best
chromosome found so far in place of the worst one after each generation, so the
population never loses it; ``elitism=false`` is the literal Algorithm 2.

Crossover is uniform: each gene is swapped between the pair with probability 1/2
(at least one gene when the pair differs).  Mutation changes one gene chosen at
random with the gene's own type-aware operator (``rayrec.platform.tuning.space``), so
every gene stays inside its domain and type.

Trials of one generation run concurrently; ``suggest`` returns None while the
generation is still being evaluated and ``Searcher.FINISHED`` after N generations.
``save``/``restore`` write JSON (never pickle), so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

try:  # the Searcher base class; the pure algorithm below does not need Ray
    from ray.tune.search import Searcher
except ImportError:  # pragma: no cover
    Searcher = object  # type: ignore[misc,assignment]


def fitness(accuracy: float, loss: float) -> float:
    """Seed 004, Algorithm 2: fit = accuracy + 1 / (1 + loss)."""
    return float(accuracy) + 1.0 / (1.0 + float(loss))


class GenTuneState:
    """The pure genetic algorithm (no Ray): population, fitness, generation counter."""

    def __init__(
        self, space: dict[str, Any], population_size: int = 8, generations: int = 3,
        p_c: float = 0.6, p_m: float = 0.3, elitism: bool = True, seed: int = 0,
    ) -> None:
        if population_size < 2 or population_size % 2:
            raise ValueError(f"gentune.population_size must be an even number >= 2, got {population_size}")
        for name, p in (("p_c", p_c), ("p_m", p_m)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"gentune.{name} must be in [0, 1], got {p}")
        if generations < 0:
            raise ValueError(f"gentune.generations must be >= 0, got {generations}")
        self.space = space
        self.keys = sorted(space)
        self.population_size = population_size
        self.generations = generations
        self.p_c, self.p_m, self.elitism = p_c, p_m, elitism
        self.rng = np.random.default_rng(seed)
        self.generation = 0
        self.population: list[dict[str, Any]] = [
            {k: space[k].sample(self.rng) for k in self.keys} for _ in range(population_size)
        ]
        self.fit: list[float | None] = [None] * population_size
        self.pending: list[int] = list(range(population_size))  # indices awaiting evaluation
        self.best: dict[str, Any] | None = None
        self.best_fit = -np.inf
        self.history: list[dict[str, Any]] = []

    # ---- operators --------------------------------------------------------------
    def crossover(self, a: dict[str, Any], b: dict[str, Any]) -> tuple[dict, dict]:
        a, b = copy.deepcopy(a), copy.deepcopy(b)
        swap = self.rng.random(len(self.keys)) < 0.5
        diff = [i for i, k in enumerate(self.keys) if a[k] != b[k]]
        if diff and not any(swap[i] for i in diff):
            swap[diff[int(self.rng.integers(len(diff)))]] = True
        for i, k in enumerate(self.keys):
            if swap[i]:
                a[k], b[k] = b[k], a[k]
        return a, b

    def mutate(self, c: dict[str, Any]) -> dict[str, Any]:
        c = copy.deepcopy(c)
        k = self.keys[int(self.rng.integers(len(self.keys)))]
        c[k] = self.space[k].mutate(c[k], self.rng)
        return c

    # ---- the generation loop ----------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.pending and self.generation >= self.generations

    def record(self, index: int, value: float) -> None:
        self.fit[index] = float(value)
        if index in self.pending:
            self.pending.remove(index)
        if value > self.best_fit:
            self.best_fit, self.best = float(value), copy.deepcopy(self.population[index])
        self.history.append({"generation": self.generation, "index": index, "fitness": float(value),
                             "config": copy.deepcopy(self.population[index])})

    def next_generation(self) -> None:
        """One pass of Algorithm 2's loop body (lines 6-21) once the current one is evaluated."""
        assert not self.pending, "evaluate the current generation first"
        while not self.pending and self.generation < self.generations:
            order = self.rng.permutation(self.population_size)
            pop = [self.population[i] for i in order]
            fit = [self.fit[i] for i in order]
            changed: set[int] = set()
            for i in range(self.population_size // 2):
                j1, j2 = 2 * i, 2 * i + 1
                r1, r2, r3 = self.rng.random(3)
                if r1 < self.p_c:
                    pop[j1], pop[j2] = self.crossover(pop[j1], pop[j2])
                if r2 < self.p_m:
                    pop[j1] = self.mutate(pop[j1])
                if r3 < self.p_m:
                    pop[j2] = self.mutate(pop[j2])
                if r1 < self.p_c or r2 < self.p_m:
                    changed.add(j1)
                if r1 < self.p_c or r3 < self.p_m:
                    changed.add(j2)
            for j in changed:
                fit[j] = None
            if self.elitism and self.best is not None and self.best not in pop:
                known = [j for j in range(len(pop)) if fit[j] is not None]
                # replace the worst evaluated (or, if all changed, a changed) chromosome
                worst = min(known, key=lambda j: fit[j]) if known else min(changed)
                pop[worst], fit[worst] = copy.deepcopy(self.best), self.best_fit
                changed.discard(worst)
            self.population, self.fit = pop, fit
            self.pending = sorted(changed)
            self.generation += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "population": self.population, "fit": self.fit,
            "pending": self.pending, "best": self.best,
            "best_fit": None if self.best is None else self.best_fit,
            "history": self.history, "rng": self.rng.bit_generator.state,
            "params": {"population_size": self.population_size, "generations": self.generations,
                       "p_c": self.p_c, "p_m": self.p_m, "elitism": self.elitism},
        }

    def load_json(self, d: dict[str, Any]) -> None:
        self.generation = int(d["generation"])
        self.population, self.fit = d["population"], d["fit"]
        self.pending, self.best = list(d["pending"]), d["best"]
        self.best_fit = -np.inf if d["best_fit"] is None else float(d["best_fit"])
        self.history = d["history"]
        self.rng.bit_generator.state = d["rng"]


class GenTuneSearcher(Searcher):
    """Ray Tune ``Searcher`` running :class:`GenTuneState`.

    ``metric``/``mode`` are given to the constructor (Tune calls
    ``set_search_properties`` only when ``param_space`` is non-empty).  The default
    metric is ``fitness`` = accuracy + 1 / (1 + loss), which rayrec's tune trainable
    reports.  A trial that errors counts as fitness -inf (the chromosome stays, its
    value is known to be bad).
    """

    def __init__(self, space: dict[str, Any], metric: str = "fitness", mode: str = "max",
                 population_size: int = 8, generations: int = 3, p_c: float = 0.6, p_m: float = 0.3,
                 elitism: bool = True, seed: int = 0) -> None:
        super().__init__(metric=metric, mode=mode)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.state = GenTuneState(space, population_size, generations, p_c, p_m, elitism, seed)
        self._trial_index: dict[str, int] = {}
        self._running: set[int] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        s = self.state
        if not s.pending and not self._running:
            s.next_generation()
        if s.finished and not self._running:
            return Searcher.FINISHED
        todo = [i for i in s.pending if i not in self._running]
        if not todo:
            return None  # wait for the generation to finish
        i = todo[0]
        self._running.add(i)
        self._trial_index[trial_id] = i
        return copy.deepcopy(s.population[i])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        i = self._trial_index.pop(trial_id, None)
        if i is None:
            return
        self._running.discard(i)
        if error or not result or self.metric not in result:
            value = -np.inf
        else:
            value = float(result[self.metric])
            if self.mode == "min":
                value = -value
        self.state.record(i, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            json.dump(self.state.to_json(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as fh:
            self.state.load_json(json.load(fh))
        # trials that were running when interrupted are evaluated again
        self._running.clear()
        self._trial_index.clear()

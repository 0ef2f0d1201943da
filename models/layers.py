"""CodeGen (seed 004, Algorithm 1): a deep RNN generated from a structure description.

The structure is four keys of a model config:

* ``states`` (w >= 1): the window, the last w pages of the sequence, one RNN state each;
* ``layers``: a list of ``{units, activation}``, the l layers of every state (layer 1 reads
  the page, layer i > 1 reads layer i - 1 of the same state);
* ``shortcut`` (0 <= h < l): every state's loss also reads its h lowest layers (Algorithm 1
  lines 19-24);
* ``history`` (bool): a column of l layers without loss that encodes the pages before the
  window (V-bar) and is the first window state's t - 1 (lines 12-18).

:func:`check_structure` validates a raw description and raises a :class:`StructureError`
naming the key path of the first bad value (``model.layers[2].activation``);
:func:`param_counts` gives the parameter count of each generated block for ``n_items``
items, and :func:`describe` the generated graph as text (``python -m rayrec.jobs.codegen``).
Pure Python: no torch needed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ACTIVATIONS", "LAYER_KEYS", "StructureError", "check_structure", "describe",
           "output_dim", "param_counts"]

#: activations a layer may name
ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
LAYER_KEYS = ("units", "activation")


class StructureError(ValueError):
    """A bad structure description; ``path`` is the config key path of the bad value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _int(value: Any, path: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StructureError(path, f"must be an integer, got {value!r}")
    if value < low:
        raise StructureError(path, f"must be >= {low}, got {value}")
    return value


def check_structure(raw: Mapping[str, Any], prefix: str = "model") -> None:
    """Validate ``states``, ``layers``, ``shortcut`` and ``history`` of ``raw`` (keys absent
    from ``raw`` are left to the defaults); raise :class:`StructureError` naming the path."""
    if "states" in raw:
        _int(raw["states"], f"{prefix}.states", 1)
    layers = raw.get("layers")
    if layers is not None:
        if not isinstance(layers, (list, tuple)) or not layers:
            raise StructureError(f"{prefix}.layers", f"must be a non-empty list of {{units, activation}}, "
                                                    f"got {layers!r}")
        for i, layer in enumerate(layers):
            path = f"{prefix}.layers[{i}]"
            if hasattr(layer, "model_dump"):
                layer = layer.model_dump()
            if not isinstance(layer, Mapping):
                raise StructureError(path, f"must be a mapping {{units, activation}}, got {layer!r}")
            unknown = sorted(set(layer) - set(LAYER_KEYS))
            if unknown:
                raise StructureError(f"{path}.{unknown[0]}", f"unknown key; allowed: {', '.join(LAYER_KEYS)}")
            if "units" not in layer:
                raise StructureError(f"{path}.units", "is required")
            _int(layer["units"], f"{path}.units", 1)
            act = layer.get("activation", "relu")
            if act not in ACTIVATIONS:
                raise StructureError(f"{path}.activation",
                                     f"unknown activation {act!r}; allowed: {', '.join(ACTIVATIONS)}")
    if "shortcut" in raw:
        h = _int(raw["shortcut"], f"{prefix}.shortcut", 0)
        n_layers = len(layers) if layers is not None else None
        if n_layers is not None and h >= n_layers:
            raise StructureError(f"{prefix}.shortcut", f"must be < the number of layers ({n_layers}), got {h}")
    if "history" in raw and not isinstance(raw["history"], bool):
        raise StructureError(f"{prefix}.history", f"must be true or false, got {raw['history']!r}")


def output_dim(units: list[int], shortcut: int) -> int:
    """Width of what a state's loss reads: the top layer plus the ``shortcut`` lowest ones."""
    return units[-1] + sum(units[:shortcut])


def param_counts(units: list[int], shortcut: int, n_items: int) -> dict[str, int]:
    """Parameters of each generated block (the history column shares the window's weights,
    so it adds none):

    * ``embedding``: Z_1 on the page one-hot, N x u_1, plus the weight of θ(p_t), u_1;
    * ``theta``: one scalar per item, N;
    * ``layer<i>``: W_i (u_i x u_i), Z_i (u_i x u_{i-1}, i > 1) and b_i (u_i);
    * ``output``: N x D weights and N biases, D = :func:`output_dim`.
    """
    counts = {"embedding": n_items * units[0] + units[0], "theta": n_items}
    for i, u in enumerate(units):
        counts[f"layer{i + 1}"] = u * u + (units[i - 1] * u if i else 0) + u
    counts["output"] = n_items * output_dim(units, shortcut) + n_items
    counts["total"] = sum(counts.values())
    return counts


def describe(states: int, units: list[int], activations: list[str], shortcut: int, history: bool,
             n_items: int) -> str:
    """The generated graph (Algorithm 1) as text, one line per block, with parameter counts."""
    counts = param_counts(units, shortcut, n_items)
    lines = [f"DRNN: {states} window state(s) x {len(units)} layer(s), shortcut {shortcut}, "
             f"history column {'on' if history else 'off'}, {n_items:,} items"]
    if history:
        lines.append("  history: V-bar = sum_i eps_i V_i over the pages before the window -> "
                     f"{len(units)} layers (shared weights, no loss) -> state 0's t-1")
    lines.append(f"  input : one-hot page (N={n_items:,}) + theta(p_t) -> Z_1 ({counts['embedding']:,} "
                 f"params), theta ({counts['theta']:,})")
    for i, (u, a) in enumerate(zip(units, activations, strict=True)):
        src = "input" if i == 0 else f"layer{i}"
        lines.append(f"  layer{i + 1}: {u} units, {a}: a(t) = f(W a(t-1) + Z {src}(t) + b) "
                     f"({counts[f'layer{i + 1}']:,} params)")
    reads = ", ".join([f"layer{len(units)}"] + [f"layer{i + 1}" for i in range(shortcut)])
    lines.append(f"  output: softmax over {n_items:,} items at each of the {states} states, reads {reads} "
                 f"(D={output_dim(units, shortcut)}, {counts['output']:,} params)")
    lines.append(f"  total : {counts['total']:,} parameters")
    return "\n".join(lines)

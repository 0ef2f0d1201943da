"""Chunked scoring + top-K over the catalog with per-row exclusions: CPU path and oracle.

Serving and the evaluation protocols need the ``k`` best items of ``score = h W^T + b`` for
each row, minus the items the user already consumed (seed 000 section 5, future-window
protocol). The naive path builds the ``(B, N)`` score matrix; here the catalog is scanned in
chunks of ``chunk`` items and a running top-``k`` is merged chunk by chunk
(``topk(cat(running, topk(chunk)))``), so memory is ``O(B (chunk + k))``.

Exclusions are a padded ``(B, E)`` long tensor (negative entries = padding); inside a chunk
the excluded entries are set to ``-inf`` by a scatter of the ``(row, item)`` pairs that fall
in it. A row with fewer than ``k`` eligible items gets ``-inf`` values and index ``-1`` in
its last slots. Ties are broken arbitrarily (as ``torch.topk``).
"""

from __future__ import annotations

import torch

__all__ = ["default_chunk", "topk_reference", "finalize"]


def default_chunk(batch: int, n: int, k: int) -> int:
    """Items per chunk: ~4M scores (16 MB fp32) per block, at least 4 k and 1024."""
    return max(1024, 4 * k, min(max(n, 1), (1 << 22) // max(batch, 1)))


def finalize(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index -1 wherever the value is -inf (fewer than k eligible items)."""
    idx = idx.masked_fill(vals == float("-inf"), -1)
    return vals, idx


@torch.no_grad()
def topk_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, k) fp32, indices (B, k) long), best first."""
    bsz, n = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    if chunk is None:
        chunk = default_chunk(bsz, n, k)
    h = hidden.float()
    run_v = torch.full((bsz, k), float("-inf"), device=dev)
    run_i = torch.full((bsz, k), -1, dtype=torch.long, device=dev)
    ex = None
    if exclude is not None and exclude.numel():
        ex = exclude
        row_base = torch.arange(bsz, device=dev).unsqueeze(1)  # (B, 1)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        wc = weight[c0:c1].float()  # (c, D)
        s = torch.addmm(bias[c0:c1].float(), h, wc.t()) if bias is not None else h @ wc.t()
        if ex is not None:
            inside = (ex >= c0) & (ex < c1)  # (B, E)
            flat = ex - c0 + row_base * (c1 - c0)  # (B, E) positions in s.view(-1)
            s.view(-1).index_fill_(0, flat[inside], float("-inf"))
        kk = min(k, c1 - c0)
        v, i = s.topk(kk, dim=1)  # (B, kk)
        cat_v = torch.cat([run_v, v], dim=1)  # (B, k + kk)
        cat_i = torch.cat([run_i, i + c0], dim=1)
        run_v, sel = cat_v.topk(k, dim=1)
        run_i = cat_i.gather(1, sel)
    return finalize(run_v, run_i)

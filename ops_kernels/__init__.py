"""rayrec.ops_kernels: fused ops for the recommenders' hot paths.

Each op is a public function that dispatches by device through ``RAYREC_KERNELS``
(``auto`` | ``reference`` | ``triton`` | ``cuda``; see ``_dispatch``): a chunked, pure-torch
reference (the CPU path and the test oracle) and a Triton implementation for CUDA.

* :func:`linear_cross_entropy` / :func:`sampled_linear_cross_entropy` -- fused linear
  cross-entropy over the catalog (never the ``(B, N)`` logits).
* :func:`topk_scores` -- fused scoring + top-K with an exclusion list.
* :func:`sampled_ranking_loss` -- BPR-max, TOP1-max, cross-entropy + logQ of GRU4Rec.
* :func:`gru_step` -- one GRU step with the session-reset mask.
* :func:`decayed_embedding_bag` -- the daily model's time-decayed input layer.
* :func:`gather_rows` / :func:`gather_rows_multi` / :func:`gather_unique_rows` -- item-table
  row lookups with a coalesced row-sparse gradient (catalog-scale training: the optimiser
  updates touched rows only).

Models and serving call these functions only, never the implementations.
"""

from rayrec.ops_kernels._dispatch import (
    KernelUnavailableError,
    available_backends,
    resolve_backend,
)
from rayrec.ops_kernels.decayed_bag import decayed_embedding_bag
from rayrec.ops_kernels.gru_step import gru_step
from rayrec.ops_kernels.linear_ce import linear_cross_entropy, sampled_linear_cross_entropy
from rayrec.ops_kernels.ranking_losses import sampled_ranking_loss
from rayrec.ops_kernels.rows import (
    check_rows,
    gather_rows,
    gather_rows_multi,
    gather_unique_rows,
    sparse_grad_rows,
)
from rayrec.ops_kernels.topk import pad_exclusions, topk_scores

__all__ = [
    "KernelUnavailableError",
    "available_backends",
    "check_rows",
    "decayed_embedding_bag",
    "gather_rows",
    "gather_rows_multi",
    "gather_unique_rows",
    "gru_step",
    "linear_cross_entropy",
    "pad_exclusions",
    "sparse_grad_rows",
    "resolve_backend",
    "sampled_linear_cross_entropy",
    "sampled_ranking_loss",
    "topk_scores",
]

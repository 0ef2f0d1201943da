"""Benchmark of the fused ops: naive torch vs the chunked reference vs the Triton kernel.

Usage::

    .venv/bin/python -m benchmarks.kernels                       # all ops, N = 10k, 100k, 1M
    .venv/bin/python -m benchmarks.kernels --ops lce --sizes 1000000 --repeats 3

Method. Every (op, N, variant) runs in a *fresh subprocess* so peak memory is not polluted by
earlier runs. The worker allocates the inputs, records the peak so far, runs the op
``repeats`` times (forward + backward for the differentiable ops) and reports

* time: the minimum and the median wall time of one call (min is the robust estimate on a
  shared machine; both are printed); with ``--rounds R`` the variants alternate R times in
  fresh processes and the best of the rounds is kept;
* peak memory: on CPU ``ru_maxrss`` (peak resident set) after the runs minus before them, i.e.
  the op's extra peak over its inputs (weights, hidden states) -- tracemalloc does not see
  torch's allocations; on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation
  before the runs.

Variants: ``naive`` materialises the (B, N) block with plain torch ops (``F.cross_entropy`` on
``h W^T + b``, ``topk`` of the full score matrix, the dense decayed input matrix, the autograd
losses of ``rayrec.models.losses``, GRU4Rec's layer math); ``reference`` is
``RAYREC_KERNELS=reference`` (chunked pure torch); ``fused`` is the Triton kernel (CUDA only).

Target (issue 8, CPU): the fused linear cross-entropy at N = 1M, B = 256, D = 128 uses <= 1/4
of the naive peak memory at <= 1.3x its time; the script prints PASS/FAIL for it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

OPS = ("lce", "topk", "bag", "ranking", "gru")
CATALOG_OPS = ("lce", "topk", "bag")


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(dev: str) -> int:
    if dev == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _setup(op: str, n: int, dev: str, args: argparse.Namespace):
    """Inputs and {variant: callable} for one op."""
    from rayrec.models import losses as L
    from rayrec.ops_kernels import (
        decayed_embedding_bag,
        gru_step,
        linear_cross_entropy,
        sampled_ranking_loss,
        topk_scores,
    )

    g = torch.Generator(device="cpu").manual_seed(0)
    b, d = args.batch, args.dim
    if op == "lce":
        h = torch.randn(b, d, generator=g).to(dev).requires_grad_()
        w = torch.randn(n, d, generator=g).mul_(0.05).to(dev).requires_grad_()  # no temporary
        bias = torch.zeros(n, device=dev, requires_grad=True)
        t = torch.randint(0, n, (b,), generator=g).to(dev)

        def run(fn):
            def call():
                h.grad = w.grad = bias.grad = None
                fn().backward()

            return call

        return {
            "naive": run(lambda: F.cross_entropy(torch.addmm(bias, h, w.t()), t)),
            "reference": run(lambda: linear_cross_entropy(h, w, t, bias, backend="reference")),
            "fused": run(lambda: linear_cross_entropy(h, w, t, bias, backend="triton")),
        }
    if op == "topk":
        h = torch.randn(b, d, generator=g).to(dev)
        w = torch.randn(n, d, generator=g).to(dev)
        bias = torch.randn(n, generator=g).to(dev)
        excl = torch.randint(0, n, (b, args.exclude), generator=g).to(dev)
        k = args.k

        @torch.no_grad()
        def naive():
            s = torch.addmm(bias, h, w.t())  # (B, N)
            s.scatter_(1, excl, float("-inf"))
            return s.topk(k, dim=1)

        return {
            "naive": naive,
            "reference": lambda: topk_scores(h, w, k, bias, excl, backend="reference"),
            "fused": lambda: topk_scores(h, w, k, bias, excl, backend="triton"),
        }
    if op == "bag":
        hs = d
        lengths = torch.randint(0, 2 * args.nnz_per_row, (b,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dev)
        nnz = int(offsets[-1])
        items = torch.randint(0, n, (nnz,), generator=g).to(dev)
        days = (torch.rand(nnz, generator=g) * 700).to(dev)
        w = torch.randn(n, hs, generator=g).mul_(0.05).to(dev).requires_grad_()
        rows = torch.repeat_interleave(torch.arange(b, device=dev), offsets[1:] - offsets[:-1])

        def naive():
            x = torch.zeros(b, n, device=dev)  # dense decayed purchase matrix (B, P)
            x.index_put_((rows, items), 1.0 / (1.0 + days / 40.0), accumulate=True)
            w.grad = None
            (x @ w).square().sum().backward()

        def via(backend):
            def call():
                w.grad = None
                decayed_embedding_bag(w, items, offsets, days, 40.0, backend=backend).square().sum().backward()

            return call

        return {"naive": naive, "reference": via("reference"), "fused": via("triton")}
    if op == "ranking":
        bb, s = args.rank_batch, args.rank_samples
        scores = torch.randn(bb, bb + s, generator=g).to(dev).requires_grad_()
        cols = torch.randint(0, max(n, 1), (bb + s,), generator=g).to(dev)

        def naive():
            scores.grad = None
            L.bpr_max(scores, L.negative_mask(cols[:bb], cols), 1.0).backward()

        def via(backend):
            def call():
                scores.grad = None
                sampled_ranking_loss(scores, "bpr-max", cols, backend=backend).backward()

            return call

        return {"naive": naive, "reference": via("reference"), "fused": via("triton")}
    if op == "gru":
        bb, hs = args.rank_batch, 100
        ts = [torch.randn(bb, 3 * hs, generator=g), torch.randn(bb, hs, generator=g),
              torch.randn(hs, 2 * hs, generator=g) * 0.1, torch.randn(hs, hs, generator=g) * 0.1]
        ts = [t.to(dev).requires_grad_() for t in ts]
        reset = (torch.rand(bb, generator=g) < 0.1).to(dev)

        def naive():
            gx, hp, wrz, wh = ts
            hm = hp * (~reset).float()[:, None]
            rz = torch.sigmoid(gx[:, : 2 * hs] + hm @ wrz)
            r, z = rz[:, :hs], rz[:, hs:]
            c = torch.tanh(gx[:, 2 * hs :] + (r * hm) @ wh)
            torch.lerp(hm, c, z).sum().backward()

        def via(backend):
            def call():
                gru_step(*ts, reset, backend=backend).sum().backward()

            return call

        return {"naive": naive, "reference": via("reference"), "fused": via("triton")}
    raise ValueError(f"unknown op {op!r}")


def worker(args: argparse.Namespace) -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if args.variant == "fused" and dev != "cuda":
        print(json.dumps({"skipped": "Triton kernels need a CUDA device"}))
        return
    fns = _setup(args.op, args.n, dev, args)
    fn = fns[args.variant]
    _sync(dev)
    if dev == "cuda":
        fn()  # compile / autotune outside the measurement
        _sync(dev)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _peak_bytes(dev)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peak = _peak_bytes(dev) - before
    print(json.dumps({"min_s": min(times), "median_s": statistics.median(times),
                      "peak_mb": peak / 2**20, "device": dev}))


def _launch(op: str, n: int, variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.kernels", "--worker", "--op", op, "--n", str(n),
           "--variant", variant, "--repeats", str(args.repeats), "--batch", str(args.batch),
           "--dim", str(args.dim), "--k", str(args.k), "--exclude", str(args.exclude),
           "--nnz-per-row", str(args.nnz_per_row), "--rank-batch", str(args.rank_batch),
           "--rank-samples", str(args.rank_samples)]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the variants of each (op, N) this many times, alternating, in fresh "
                        "processes; the table keeps the best time and the largest peak")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--exclude", type=int, default=50)
    p.add_argument("--nnz-per-row", type=int, default=30)
    p.add_argument("--rank-batch", type=int, default=512)
    p.add_argument("--rank-samples", type=int, default=2048)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--op", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        p.error(f"--ops: unknown {bad}; choose from {OPS}")
    sizes = [int(s) for s in args.sizes.split(",")]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {dev}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"B={args.batch} D={args.dim} repeats={args.repeats}")
    hdr = f"{'op':8} {'N':>9} {'variant':10} {'min ms':>10} {'median ms':>10} {'peak MB':>9}"
    print(hdr)
    print("-" * len(hdr))
    results: dict[tuple[str, int, str], dict] = {}
    for op in ops:
        for n in sizes if op in CATALOG_OPS else sizes[:1]:
            per: dict[str, dict] = {}
            for _ in range(max(1, args.rounds)):
                for variant in ("naive", "reference", "fused"):
                    r = _launch(op, n, variant, args)
                    old = per.get(variant)
                    if old is None or "min_s" not in old:
                        per[variant] = r
                    elif "min_s" in r:
                        per[variant] = {**r, "min_s": min(old["min_s"], r["min_s"]),
                                        "median_s": min(old["median_s"], r["median_s"]),
                                        "peak_mb": max(old["peak_mb"], r["peak_mb"])}
            for variant in ("naive", "reference", "fused"):
                r = per[variant]
                results[(op, n, variant)] = r
                if "min_s" in r:
                    print(f"{op:8} {n:>9} {variant:10} {1e3 * r['min_s']:>10.1f} "
                          f"{1e3 * r['median_s']:>10.1f} {r['peak_mb']:>9.1f}", flush=True)
                else:
                    why = r.get("skipped") or r.get("error")
                    print(f"{op:8} {n:>9} {variant:10} {'-':>10} {'-':>10} {'-':>9}  ({why})",
                          flush=True)
    key_n, key_r = ("lce", 1_000_000, "naive"), ("lce", 1_000_000, "reference")
    if key_n in results and key_r in results and "min_s" in results[key_n] \
            and "min_s" in results[key_r] and args.batch == 256 and args.dim == 128:
        rn, rr = results[key_n], results[key_r]
        mem = rr["peak_mb"] / max(rn["peak_mb"], 1e-9)
        tim = rr["min_s"] / rn["min_s"]
        ok = mem <= 0.25 and tim <= 1.3
        print(f"\nCPU target (lce, N=1M, B=256, D=128): reference/naive peak memory {mem:.3f} "
              f"(<= 0.25), time {tim:.2f}x (<= 1.3x): {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

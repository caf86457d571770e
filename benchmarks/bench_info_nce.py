"""Benchmark InfoNCELoss against a one-matmul cross-entropy loss and open_clip's ClipLoss.

All sides get the same raw (unnormalised) embeddings and the same logit scale, and include
what a model does before its loss (``F.normalize`` of both sides, ``logit_scale.exp()``), so
that each times the same computation, forward + backward:

* ``ours``: ``jepa_lightning.losses.InfoNCELoss`` (single process: no gather);
* ``one matmul``: the plainest correct loss: ``logits = scale * a @ b.T``, the mean of
  ``F.cross_entropy(logits, arange)`` and ``F.cross_entropy(logits.T, arange)``;
* ``open_clip``: ``open_clip.loss.ClipLoss`` (a benchmark-only dependency:
  ``pip install --no-deps open-clip-torch``; only its ``loss.py``, which needs just torch, is
  loaded, by file path). Without it the side is left out and the result says so.

Values and gradients must agree (the script stops otherwise). A timed run makes as many calls
as last ``MIN_RUN_S`` (0.2 s, as ``timeit``'s autorange; 4 calls at batch 1024, one at 4096),
the same number on every side, and the table reports the time per call. Repeats alternate
their order; medians and spreads are reported. The goal is held to the median of the
per-repeat ratios ours / fastest baseline (``common.paired_ratios``, as the other benchmarks
do): the runs of a repeat are next to each other in time, so the ratio cancels this machine's
drift between repeats, which moved single timings by 11-39% here and a ratio of medians with
them.

Usage::

    python benchmarks/bench_info_nce.py [--batch-sizes 256 1024 4096] [--dim 512] [--smoke]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import common
import torch
import torch.nn.functional as F

from jepa_lightning.losses import InfoNCELoss

GOAL = 1.05  # ours at most this times the fastest baseline
MIN_RUN_S = 0.2  # a timed run lasts at least this long (as timeit.autorange), at least one call


def load_open_clip_loss() -> ModuleType | None:
    """open_clip's ``loss.py`` loaded alone, or None when open_clip is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    if loss_spec is None or loss_spec.loader is None:
        raise SystemExit(f"open_clip is installed but {path} cannot be loaded")
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def one_matmul_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale.exp() * F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def bench(batch: int, dim: int, repeats: int, clip: ModuleType | None) -> dict:
    g = torch.Generator().manual_seed(batch)
    pred = torch.randn(batch, dim, generator=g).requires_grad_()
    target = torch.randn(batch, dim, generator=g).requires_grad_()
    ours = InfoNCELoss()
    losses: dict[str, Callable[[], torch.Tensor]] = {"ours": lambda: ours(pred, target)}
    scales = {"ours": ours.logit_scale}
    matmul_scale = torch.nn.Parameter(ours.logit_scale.detach().clone())
    losses["one matmul"] = lambda: one_matmul_loss(pred, target, matmul_scale)
    scales["one matmul"] = matmul_scale
    if clip is not None:
        clip_loss = clip.ClipLoss()
        clip_scale = torch.nn.Parameter(ours.logit_scale.detach().clone())
        losses["open_clip"] = lambda: clip_loss(
            F.normalize(pred, dim=-1), F.normalize(target, dim=-1), clip_scale.exp()
        )
        scales["open_clip"] = clip_scale

    values, grads = {}, {}
    for name, loss in losses.items():
        value = loss()
        values[name] = value.item()
        grads[name] = torch.autograd.grad(value, [pred, target, scales[name]])
    for name in losses:
        value_diff = abs(values[name] - values["ours"])
        grad_diff = max(
            (a - b).abs().max().item() for a, b in zip(grads[name], grads["ours"], strict=True)
        )
        if value_diff > 1e-5 or grad_diff > 1e-5:
            raise SystemExit(
                f"{name} disagrees with ours at batch {batch}: {value_diff=} {grad_diff=}"
            )

    def step(loss: Callable[[], torch.Tensor], calls: int) -> Callable[[], common.Timing]:
        def calls_of_loss() -> None:
            for _ in range(calls):
                for p in (pred, target, *scales.values()):
                    p.grad = None
                loss().backward()

        return lambda: common.timed(calls_of_loss)

    for loss in losses.values():  # warm-up
        step(loss, 1)()
    # Each run makes enough calls to last MIN_RUN_S, the same number on every side: a single
    # call of a few milliseconds is as short as the machine's jitter.
    single = step(losses["ours"], 1)().wall_s
    calls = max(1, round(MIN_RUN_S / single))
    runs = {n: step(loss, calls) for n, loss in losses.items()}
    times = common.interleave(runs, repeats, False)
    return {
        "batch_size": batch,
        "dim": dim,
        "loss": values["ours"],
        "calls_per_run": calls,
        "ms": {name: common.timing_stats(ts, scale=1e3 / calls) for name, ts in times.items()},
        "ours_over": {name: common.paired_ratios(times["ours"], ts) for name, ts in times.items()},
    }


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=15)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    if args.smoke:
        args.batch_sizes, args.dim, args.repeats = [32], 16, 2
    common.setup(args)
    clip = load_open_clip_loss()
    if clip is None:
        print("open_clip is not installed (pip install --no-deps open-clip-torch): side left out")

    results = [bench(batch, args.dim, args.repeats, clip) for batch in args.batch_sizes]
    rows, headlines = [], []
    for r in results:
        ours = r["ms"]["ours"]["wall"]["median"]
        for name, s in r["ms"].items():
            wall = s["wall"]
            rows.append(
                [
                    str(r["batch_size"]),
                    name,
                    f"{wall['median']:.2f} ms",
                    f"{100 * wall['spread']:.0f}%",
                    f"{ours / wall['median']:.3f}",
                    f"{r['ours_over'][name]['wall']['median']:.3f}",
                ]
            )
        baselines = [name for name in r["ms"] if name != "ours"]
        fastest = min(baselines, key=lambda name: r["ms"][name]["wall"]["median"])
        ratio = r["ours_over"][fastest]["wall"]["median"]
        headlines.append(
            common.headline(
                f"InfoNCE batch {r['batch_size']}: ours / fastest baseline (paired)",
                ratio,
                f"<= {GOAL}",
                ratio <= GOAL,
                fastest=fastest,
                ratio_of_medians=ours / r["ms"][fastest]["wall"]["median"],
            )
        )
    common.write_result(
        args,
        "info_nce",
        f"InfoNCELoss vs one-matmul cross-entropy and open_clip ClipLoss, fwd+bwd, D={args.dim}",
        ["batch", "loss", "median", "spread", "ours / this (medians)", "ours / this (paired)"],
        rows,
        headlines,
        {"open_clip": clip is not None, "results": results},
    )


if __name__ == "__main__":
    main()

"""Benchmark InfoNCELoss against open_clip's ClipLoss: same value, forward+backward time.

open_clip is a benchmark-only dependency (``pip install --no-deps open-clip-torch``). Its
package ``__init__`` imports torchvision and model code, so only ``open_clip/loss.py`` (which
needs just torch) is loaded, by file path.

Both sides get the same raw (unnormalised) embeddings and the same logit scale; the open_clip
side includes what its model does before the loss (``F.normalize`` of both features and
``logit_scale.exp()``), so both time the same computation. Runs are interleaved (ABBA order)
and the median is reported, to be robust to a noisy machine.

Usage::

    python benchmarks/bench_info_nce.py --out benchmarks/results/info_nce.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from jepa_lightning.losses import InfoNCELoss


def load_open_clip_loss() -> ModuleType:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "open_clip is not installed; it is a benchmark-only dependency:\n"
            "    pip install --no-deps open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    if not path.is_file():
        sys.exit(f"open_clip is installed but {path} is missing")
    loss_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    if loss_spec is None or loss_spec.loader is None:
        sys.exit(f"cannot load {path}")
    module = importlib.util.module_from_spec(loss_spec)
    try:
        loss_spec.loader.exec_module(module)
    except ImportError as err:
        sys.exit(f"cannot import {path} standalone: {err}")
    return module


def time_runs(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench(batch: int, dim: int, repeats: int, warmup: int, clip_loss_cls: type) -> dict:
    g = torch.Generator().manual_seed(batch)
    pred = torch.randn(batch, dim, generator=g).requires_grad_()
    target = torch.randn(batch, dim, generator=g).requires_grad_()
    ours = InfoNCELoss()
    clip_logit_scale = torch.nn.Parameter(ours.logit_scale.detach().clone())
    clip = clip_loss_cls()

    def run_ours() -> torch.Tensor:
        return ours(pred, target)

    def run_clip() -> torch.Tensor:
        img = F.normalize(pred, dim=-1)
        txt = F.normalize(target, dim=-1)
        return clip(img, txt, clip_logit_scale.exp())

    params = [pred, target, ours.logit_scale, clip_logit_scale]

    def step(run: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            for p in params:
                p.grad = None
            run().backward()

        return fn

    # Values and gradients.
    loss_ours, loss_clip = run_ours(), run_clip()
    grads_ours = torch.autograd.grad(loss_ours, [pred, target, ours.logit_scale])
    grads_clip = torch.autograd.grad(loss_clip, [pred, target, clip_logit_scale])
    value_diff = abs(loss_ours.item() - loss_clip.item())
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads_ours, grads_clip, strict=True))

    times = time_runs({"ours": step(run_ours), "open_clip": step(run_clip)}, repeats, warmup)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "batch_size": batch,
        "dim": dim,
        "loss": loss_ours.item(),
        "abs_loss_diff": value_diff,
        "max_abs_grad_diff": grad_diff,
        "median_ms_ours": 1e3 * med["ours"],
        "median_ms_open_clip": 1e3 * med["open_clip"],
        "ratio": med["ours"] / med["open_clip"],
        "times_ms_ours": [1e3 * t for t in times["ours"]],
        "times_ms_open_clip": [1e3 * t for t in times["open_clip"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/info_nce.json"))
    args = parser.parse_args()

    clip_loss_cls = load_open_clip_loss().ClipLoss
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows = []
    header = (
        f"{'batch':>6} {'dim':>5} {'ours ms':>9} {'open_clip ms':>13} {'ratio':>6} "
        f"{'|dloss|':>9} {'max|dgrad|':>10}"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batch_sizes:
        row = bench(batch, args.dim, args.repeats, args.warmup, clip_loss_cls)
        rows.append(row)
        print(
            f"{batch:>6} {args.dim:>5} {row['median_ms_ours']:>9.2f} "
            f"{row['median_ms_open_clip']:>13.2f} {row['ratio']:>6.3f} "
            f"{row['abs_loss_diff']:>9.2e} {row['max_abs_grad_diff']:>10.2e}"
        )
        if not row["abs_loss_diff"] <= 1e-6 or not math.isfinite(row["loss"]):
            sys.exit(f"loss mismatch at batch {batch}: {row['abs_loss_diff']:.3g}")

    result = {
        "benchmark": "InfoNCELoss vs open_clip ClipLoss, forward+backward, CPU, fp32",
        "torch": torch.__version__,
        "open_clip": importlib.metadata.version("open-clip-torch"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark CrossModalRecall against torchmetrics retrieval and a full-matrix reference.

Usage::

    python benchmarks/bench_recall.py [--sizes 1000 10000 50000] [--dim 256]
                                      [--out benchmarks/results/recall.json]

Methods (image→text and text→image Recall@{1,5,10}, one positive per query):

* ``ours``: ``jepa_lightning.metrics.CrossModalRecall`` fed in batches of 1024 rows
  (``update`` + ``compute``; chunked, never materialises N×N).
* ``torchmetrics``: ``torchmetrics.retrieval.RetrievalHitRate`` (== ``RetrievalRecall`` with one
  positive per query), fed the equivalent N×N cosine scores shifted by +2 so every score is
  positive, a long 0/1 target (the identity) and the query index of every score. One metric
  per (direction, k), as torchmetrics takes a single ``top_k``. Timed end to end (scores,
  index tensors, update, compute).
* ``full``: the open_clip ``get_clip_metrics`` approach: ``logits = a @ b.T``, ``argsort``,
  rank of the ground truth, ``rank < k``.

Every case runs in a fresh subprocess. Peak memory is that process's peak RSS
(``ru_maxrss``) minus its RSS right before the timed call (after imports, data creation and
a small warm-up run), i.e. the extra memory the method needed. Cases whose estimated peak
exceeds ``--max-baseline-gib`` are skipped ("skipped (memory)"); for the full-matrix reference
the table then shows a lower bound (the N×N float32 logits alone, 4·N² bytes), which the
memory goal is checked against.

Runtime with the defaults on 2 CPU cores: about 12 minutes, 9 of them (and 8 GiB) for
torchmetrics at N=10k (six N²-sized metrics, each sorting 10⁸ scores and looping over 10⁴
queries in Python). ``--max-baseline-gib 4`` skips torchmetrics at 10k for a quick run
(about 2.5 minutes; the speed goal is then checked at N=1k).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TOP_K = (1, 5, 10)
NOISE = 4.0  # text = image + NOISE * noise: cos(pos) ≈ 0.24, so recall is far from 0 and 1
BATCH = 1024
GIB = 1024**3
# Peak bytes per N² score (measured at N=10k: torchmetrics 8.1 GiB, full 1.5 GiB), used only
# to decide what to skip.
BYTES_PER_N2 = {"torchmetrics": 85, "full": 16}
SPEED_GOAL, MEMORY_GOAL = 20.0, 0.1


# ----------------------------------------------------------------------------- methods
def run_ours(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    from jepa_lightning.metrics import CrossModalRecall

    metric = CrossModalRecall(top_k=TOP_K)
    for start in range(0, image.shape[0], BATCH):
        metric.update(image[start : start + BATCH], text[start : start + BATCH])
    return {k: v.item() for k, v in metric.compute().items()}


def run_torchmetrics(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    from torchmetrics.retrieval import RetrievalHitRate

    n = image.shape[0]
    # Shift cosine scores into (1, 3]: no score is <= 0, whatever the version does with those.
    scores = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T + 2.0
    indexes = torch.arange(n).repeat_interleave(n)  # query id of every score
    target = torch.eye(n, dtype=torch.long).flatten()  # long: torchmetrics would copy a bool
    out: dict[str, float] = {}
    for name in ("i2t", "t2i"):
        preds = (scores if name == "i2t" else scores.T).flatten()
        for k in TOP_K:
            metric = RetrievalHitRate(top_k=k, empty_target_action="error")
            metric.update(preds, target, indexes=indexes)
            out[f"{name}/R@{k}"] = metric.compute().item()
            del metric
        del preds
    out["mean"] = sum(out.values()) / len(out)
    return out


def run_full(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    # open_clip: src/open_clip_train/zero_shot / training/train.py::get_clip_metrics
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    ground_truth = torch.arange(image.shape[0]).view(-1, 1)
    out: dict[str, float] = {}
    for name, logit in (("i2t", logits), ("t2i", logits.T)):
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1]
        del ranking
        for k in TOP_K:
            out[f"{name}/R@{k}"] = (preds < k).float().mean().item()
    out["mean"] = sum(out.values()) / len(out)
    return out


METHODS = {"ours": run_ours, "torchmetrics": run_torchmetrics, "full": run_full}


# ----------------------------------------------------------------------------- one case
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _make_data(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g)
    text = torch.randn(n, dim, generator=g).mul_(NOISE).add_(image)  # in place: no temporaries
    return image, text


def run_case(method: str, n: int, dim: int, seed: int) -> dict[str, Any]:
    """Run one method in this process and return timing, memory and the recall values."""
    fn = METHODS[method]
    fn(*_make_data(256, dim, seed + 1))  # warm-up: imports, kernels, allocator
    image, text = _make_data(n, dim, seed)
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    result = fn(image, text)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "time_s": elapsed,
        "peak_mib": max(peak - rss_before, 0) / 2**20,
        "rss_before_mib": rss_before / 2**20,
        "result": result,
    }


def spawn_case(method: str, n: int, dim: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", method, "--n", str(n), "--dim", str(dim)]
    cmd += ["--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {method} N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def _fmt_mem(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recall.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-baseline-gib",
        type=float,
        default=8.0,
        help="skip a baseline whose estimated peak memory exceeds this",
    )
    parser.add_argument("--case", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case is not None:  # child process: one measurement, JSON on stdout
        print(json.dumps(run_case(args.case, args.n, args.dim, args.seed)))
        return

    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        cases: dict[str, Any] = {}
        for method in ("ours", "torchmetrics", "full"):
            est_gib = BYTES_PER_N2.get(method, 0) * n * n / GIB
            if est_gib > args.max_baseline_gib:
                cases[method] = {"skipped": "memory", "estimated_peak_gib": est_gib}
                print(f"N={n:>6} {method:<12} skipped (memory, est. {est_gib:.1f} GiB)", flush=True)
                continue
            cases[method] = spawn_case(method, n, args.dim, args.seed)
            c = cases[method]
            print(
                f"N={n:>6} {method:<12} {c['time_s']:8.2f} s  {_fmt_mem(c['peak_mib']):>10}"
                f"  mean={c['result']['mean']:.4f}",
                flush=True,
            )
        # agreement: every baseline that ran must give the same numbers (ties aside: <= 1 query)
        ours = cases["ours"]["result"]
        for method in ("torchmetrics", "full"):
            if "result" in cases[method]:
                diff = max(abs(ours[key] - cases[method]["result"][key]) for key in ours)
                cases[method]["max_abs_diff_vs_ours"] = diff
                assert diff <= 1.0 / n + 1e-9, f"{method} disagrees with ours at N={n}: {diff}"
        if "skipped" in cases["full"]:
            cases["full"]["peak_lower_bound_mib"] = 4 * n * n / 2**20  # the fp32 logits alone
        rows.append({"n": n, "cases": cases})

    # ratios against baselines measured in the same run
    for row in rows:
        ours = row["cases"]["ours"]
        for method in ("torchmetrics", "full"):
            c = row["cases"][method]
            if "time_s" in c:
                c["speedup"] = c["time_s"] / ours["time_s"]
                if c["peak_mib"] > 0:  # tiny N can be below RSS resolution
                    c["memory_ratio"] = ours["peak_mib"] / c["peak_mib"]
            elif "peak_lower_bound_mib" in c:
                c["memory_ratio_upper_bound"] = ours["peak_mib"] / c["peak_lower_bound_mib"]

    largest = rows[-1]
    tm_rows = [r for r in rows if "speedup" in r["cases"]["torchmetrics"]]
    goals: dict[str, Any] = {}
    if tm_rows:
        r = tm_rows[-1]
        s = r["cases"]["torchmetrics"]["speedup"]
        goals["speedup_vs_torchmetrics"] = {"n": r["n"], "value": s, "goal": SPEED_GOAL}
        goals["speedup_vs_torchmetrics"]["met"] = s >= SPEED_GOAL
    full = largest["cases"]["full"]
    mem = full.get("memory_ratio", full.get("memory_ratio_upper_bound"))
    if mem is not None:
        goals["memory_vs_full"] = {
            "n": largest["n"],
            "value": mem,
            "goal": MEMORY_GOAL,
            "met": mem <= MEMORY_GOAL,
            "against": "measured" if "memory_ratio" in full else "lower bound 4*N^2 bytes",
        }

    table = [["N", "method", "time", "peak mem", "R@1 i2t/t2i", "mean", "ours faster", "mem ratio"]]
    for row in rows:
        for method in ("ours", "torchmetrics", "full"):
            c = row["cases"][method]
            if "skipped" in c:
                mem = (
                    f">= {_fmt_mem(c['peak_lower_bound_mib'])}"
                    if "peak_lower_bound_mib" in c
                    else f"~{c['estimated_peak_gib']:.0f} GiB est."
                )
                ratio = (
                    f"<= {c['memory_ratio_upper_bound']:.3f}"
                    if "memory_ratio_upper_bound" in c
                    else "-"
                )
                table.append([str(row["n"]), method, "skipped (memory)", mem, "-", "-", "-", ratio])
                continue
            r = c["result"]
            table.append(
                [
                    str(row["n"]),
                    method,
                    f"{c['time_s']:.2f} s",
                    _fmt_mem(c["peak_mib"]),
                    f"{r['i2t/R@1']:.4f}/{r['t2i/R@1']:.4f}",
                    f"{r['mean']:.4f}",
                    f"{c['speedup']:.1f}x" if "speedup" in c else "-",
                    f"{c['memory_ratio']:.3f}" if "memory_ratio" in c else "-",
                ]
            )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    print()
    for i, line in enumerate(table):
        print(" | ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print()
    for name, goal in goals.items():
        print(
            f"goal {name}: {goal['value']:.3f} at N={goal['n']} "
            f"(goal {goal['goal']}) -> {'MET' if goal['met'] else 'NOT MET'}"
        )

    report = {
        "dim": args.dim,
        "top_k": list(TOP_K),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "rows": rows,
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

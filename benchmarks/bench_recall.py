"""Benchmark CrossModalRecall against a plain chunked top-k, torchmetrics and a full N×N sort.

Image→text and text→image Recall@{1,5,10}, one positive per query, on the same random
embeddings (text = image + noise, D=256 by default) for every method:

* ``ours``: ``jepa_lightning.metrics.CrossModalRecall`` fed in batches of 1024 rows
  (``update`` + ``compute``).
* ``topk``: the plain baseline of issue 14: normalise once, then per chunk of query rows one
  ``torch.mm`` into a reused buffer and ``torch.topk`` of the largest k; a query is a hit at
  ``k`` when its k-th best score is at most its positive's score. That is the same tie rule
  as ours (ties in favour of the positive: a hit when fewer than ``k`` candidates score
  strictly better than the positive), and the same chunk rows as ours' automatic choice.
* ``torchmetrics``: ``RetrievalHitRate`` at k=1, 5, 10 in one ``MetricCollection`` with one
  compute group (one update per direction, not one per k), fed the N×N cosine scores shifted
  by +2 (no score <= 0), a long 0/1 target and the query index of every score.
* ``full``: the open_clip ``get_clip_metrics`` way: ``logits = a @ b.T``, ``argsort``, the
  rank of the ground truth, ``rank < k``.

Every measurement runs in a fresh subprocess, so that its peak memory (``ru_maxrss``) minus its
memory right before the timed call (after imports, data creation and a small warm-up) is the
extra memory that the method needed. ``ours`` and ``topk`` run ``--repeats`` times each, in
alternating order; the N²-memory references once, and they are skipped when their estimated
peak exceeds ``--max-baseline-gib`` (shown as "skipped (memory)").

**Large N (``--stream-n``, default 1M).** The metric keeps every embedding until
``compute``: its state is ``O(N·D)``, ``2·N·D·4`` bytes of float32 embeddings plus 9 bytes of
ids and flags per row (2.1 GB at N=1M, D=256). ``compute`` adds the texts' concatenated copy
(``N·D·4``: 1 GB), ``8·chunk·N`` bytes (a chunk's float32 scores and their comparison with
each text's best positive; chunk = max(32, 2^24 / N) rows: 256 MB at 1M) and under 128 bytes
a row of ids and counts. The inputs
fed to the metric, once freed, stay in glibc's heap between the kept batches (~1 GB at 1M);
they are returned to the system (``malloc_trim``) before the measurement and reported apart.
Ranking 1M queries against 1M candidates is N²·D ≈ 2.6·10^14 multiply-adds per direction
(over an hour on two cores), so the streamed mode feeds all N rows to the metric (the memory
is real), then times ``--stream-queries`` rows of each direction against all N candidates:
ours' one pass over that many image rows (both directions at once), and the top-k baseline
once per direction. It reports the time per 1k queries of each direction and that
extrapolated to N; the stated bound is checked against the measured peak.

Goals (issue 14): ours at most 1.05× the top-k baseline's time from N=10k (at 1k the
metric's fixed ~3 ms is shown, not held to it); N=50k under 30 s and under 1 GB; the
streamed mode within its stated bound.

Usage::

    python benchmarks/bench_recall.py [--sizes 1000 10000 50000] [--dim 256]
        [--stream-n 1000000] [--stream-queries 2048] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
from functools import partial
from typing import Any

import common
import torch
import torch.nn.functional as F

from jepa_lightning.metrics import CrossModalRecall
from jepa_lightning.metrics.recall import _auto_chunk_size, _count_better_both, _row_blocks

TOP_K = (1, 5, 10)
NOISE = 4.0  # text = image + NOISE * noise: cos(pos) ≈ 0.24, so recall is far from 0 and 1
BATCH = 1024
GIB = 1024**3
# Peak bytes per N² score, used only to decide what to skip.
BYTES_PER_N2 = {"torchmetrics": 40, "full": 16}
SPEED_GOAL, TIME_GOAL_50K_S, MEMORY_GOAL_50K_MIB = 1.05, 30.0, 1024.0
# The speed goal is the issue's, set at N = 10k and 50k. At 1k the whole computation takes
# ~13 ms and the metric's fixed costs (its object and states, normalising, grouping ids) of
# ~3 ms are a visible share: shown, not held to the goal.
SPEED_GOAL_FROM_N = 10_000


# ----------------------------------------------------------------------------- methods
def run_ours(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    metric = CrossModalRecall(top_k=TOP_K)
    for start in range(0, image.shape[0], BATCH):
        metric.update(image[start : start + BATCH], text[start : start + BATCH])
    return {k: v.item() for k, v in metric.compute().items()}


def topk_hits(queries: torch.Tensor, candidates: torch.Tensor, chunk: int) -> list[int]:
    """Hits at each k of normalised ``queries`` whose positive is the same row of candidates."""
    k_max = min(max(TOP_K), candidates.shape[0])
    hits = torch.zeros(len(TOP_K), dtype=torch.int64)
    buffer = queries.new_empty(min(chunk, queries.shape[0]), candidates.shape[0])
    ks = torch.tensor([min(k, k_max) - 1 for k in TOP_K])
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk]
        sims = torch.mm(block, candidates.T, out=buffer[: block.shape[0]])
        positive = sims.diagonal(offset=start)  # query i's positive is candidate i
        kth = sims.topk(k_max, dim=1, sorted=True).values[:, ks]
        hits += (kth <= positive[:, None]).sum(dim=0)
    return hits.tolist()


def run_topk(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    n = image.shape[0]
    chunk = _auto_chunk_size(n)
    out: dict[str, float] = {}
    for name, queries, candidates in (("i2t", image, text), ("t2i", text, image)):
        for k, h in zip(TOP_K, topk_hits(queries, candidates, chunk), strict=True):
            out[f"{name}/R@{k}"] = h / n
    out["mean"] = sum(out.values()) / len(out)
    return out


def run_torchmetrics(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    from torchmetrics import MetricCollection
    from torchmetrics.retrieval import RetrievalHitRate

    n = image.shape[0]
    # Shift cosine scores into (1, 3]: no score is <= 0, whatever the version does with those.
    scores = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T + 2.0
    indexes = torch.arange(n).repeat_interleave(n)  # query id of every score
    target = torch.eye(n, dtype=torch.long).flatten()  # long: torchmetrics would copy a bool
    out: dict[str, float] = {}
    names = [f"R@{k}" for k in TOP_K]
    for direction in ("i2t", "t2i"):
        preds = (scores if direction == "i2t" else scores.T).flatten()
        metrics = MetricCollection(
            {f"R@{k}": RetrievalHitRate(top_k=k, empty_target_action="error") for k in TOP_K},
            compute_groups=[names],
        )
        metrics.update(preds, target, indexes=indexes)
        out.update({f"{direction}/{key}": v.item() for key, v in metrics.compute().items()})
        del metrics, preds
    out["mean"] = sum(out.values()) / len(out)
    return out


def run_full(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    # open_clip: src/open_clip_train/train.py::get_clip_metrics
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


METHODS = {"ours": run_ours, "topk": run_topk, "torchmetrics": run_torchmetrics, "full": run_full}


# ----------------------------------------------------------------------------- one case
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _make_data(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g)
    text = torch.randn(n, dim, generator=g).mul_(NOISE).add_(image)  # in place: no temporaries
    return image, text


def run_case(method: str, n: int, dim: int, seed: int) -> dict[str, Any]:
    """Runs one method in this process: timing, extra memory and the recall values."""
    fn = METHODS[method]
    fn(*_make_data(256, dim, seed + 1))  # warm-up: imports, kernels, allocator
    image, text = _make_data(n, dim, seed)
    rss_before = _rss_bytes()
    watch = common.Stopwatch()
    watch.start()
    result = fn(image, text)
    timing = watch.stop()
    return {
        "wall_s": timing.wall_s,
        "cpu_s": timing.cpu_s,
        "peak_mib": max(_peak_bytes() - rss_before, 0) / 2**20,
        "result": result,
    }


def state_bytes(n: int, dim: int) -> int:
    """What the metric keeps for N rows: float32 embeddings of both sides, ids and flags."""
    return 2 * n * dim * 4 + 9 * n


def _release_freed_heap() -> None:
    """Returns freed heap pages to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def stated_bound_bytes(n: int, dim: int) -> int:
    """The metric's peak during ``compute``: its states, the texts' concatenated copy, ids,
    grouping and counts (under 128 bytes a row), and one chunk's scores and their comparison
    with each text's best positive."""
    return state_bytes(n, dim) + n * dim * 4 + 128 * n + 8 * _auto_chunk_size(n) * n


def run_stream(n: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Feeds N rows to the metric, then times ``queries`` rows per direction, ours vs top-k."""
    rss_start = _rss_bytes()
    metric = CrossModalRecall(top_k=TOP_K)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, 16 * BATCH):  # streamed in: never more than one batch of inputs
        rows = min(16 * BATCH, n - start)
        image = torch.randn(rows, dim, generator=g)
        text = torch.randn(rows, dim, generator=g).mul_(NOISE).add_(image)
        metric.update(image, text)
    del image, text
    retained_mib = (_rss_bytes() - rss_start) / 2**20
    # The feeding loop's freed inputs stay in glibc's heap, between the batches the metric
    # keeps (about half the state again at 1M): the allocator's, not the metric's, memory.
    _release_freed_heap()
    state_mib = (_rss_bytes() - rss_start) / 2**20
    ids = torch.arange(n)
    chunk = _auto_chunk_size(n)
    timings: dict[str, list[common.Timing]] = {"ours": [], "topk": []}
    # As compute() does: the texts concatenated, image rows read from the stored batches (here
    # the first `queries` of them), one pass for both directions.
    texts = torch.cat(metric.text_emb)
    images = next(_row_blocks(metric.image_emb, queries, texts.dtype))
    timings["ours"].append(
        common.timed(partial(_count_better_both, [images], ids[:queries], texts, ids, n, chunk))
    )
    timings["topk"].append(common.timed(partial(topk_hits, images, texts, chunk)))
    del texts
    candidates = torch.cat(metric.image_emb)
    queries_t2i = next(_row_blocks(metric.text_emb, queries, candidates.dtype))
    timings["topk"].append(common.timed(partial(topk_hits, queries_t2i, candidates, chunk)))
    del candidates
    peak_mib = (_peak_bytes() - rss_start) / 2**20
    out: dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "chunk": chunk}
    for name, ts in timings.items():
        wall = sum(t.wall_s for t in ts)
        out[name] = {
            "wall_s_per_1k_queries": 1e3 * wall / queries,
            "extrapolated_wall_s": wall * n / queries,
            "cpu_s": sum(t.cpu_s for t in ts),
        }
    out["state_mib"] = state_mib
    out["state_with_freed_inputs_mib"] = retained_mib
    out["state_formula_mib"] = state_bytes(n, dim) / 2**20
    out["peak_mib"] = peak_mib
    out["stated_bound_mib"] = stated_bound_bytes(n, dim) / 2**20
    return out


def spawn(*case_args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *case_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(case_args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def _mem(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def measure_size(args: Any, n: int) -> dict[str, Any]:
    common_args = ["--dim", str(args.dim), "--seed", str(args.seed), "--threads", str(args.threads)]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "topk": []}
    for repeat in range(args.repeats):  # ours, topk, topk, ours, ...
        for method in ("ours", "topk") if repeat % 2 == 0 else ("topk", "ours"):
            runs[method].append(spawn("--case", method, "--n", str(n), *common_args))
            print(f"  N={n:>7} {method:>12}: {runs[method][-1]['wall_s']:8.2f} s", flush=True)
    cases: dict[str, Any] = {}
    for method, rs in runs.items():
        cases[method] = {
            "wall": common.stats([r["wall_s"] for r in rs]),
            "cpu": common.stats([r["cpu_s"] for r in rs]),
            "peak_mib": max(r["peak_mib"] for r in rs),
            "result": rs[0]["result"],
        }
    for method in ("torchmetrics", "full"):
        est_gib = BYTES_PER_N2[method] * n * n / GIB
        if est_gib > args.max_baseline_gib:
            cases[method] = {"skipped": "memory", "estimated_peak_gib": est_gib}
            print(f"  N={n:>7} {method:>12}: skipped (memory, est. {est_gib:.1f} GiB)")
            continue
        r = spawn("--case", method, "--n", str(n), *common_args)
        cases[method] = {
            "wall": common.stats([r["wall_s"]]),
            "cpu": common.stats([r["cpu_s"]]),
            "peak_mib": r["peak_mib"],
            "result": r["result"],
        }
        print(f"  N={n:>7} {method:>12}: {r['wall_s']:8.2f} s", flush=True)
    ours = cases["ours"]["result"]
    for method, case in cases.items():
        if "result" in case:  # every method must give the same numbers (near-ties aside)
            diff = max(abs(ours[key] - case["result"][key]) for key in ours)
            case["max_abs_diff_vs_ours"] = diff
            if diff > 1.0 / n + 1e-9:
                raise SystemExit(f"{method} disagrees with ours at N={n}: {diff}")
            case["vs_ours"] = case["wall"]["median"] / cases["ours"]["wall"]["median"]
    return cases


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--stream-n", type=int, default=1_000_000, help="0: no streamed mode")
    parser.add_argument("--stream-queries", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-baseline-gib", type=float, default=8.0)
    parser.add_argument("--case", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.setup(args)

    if args.case is not None:  # child process: one measurement, JSON on stdout
        print(json.dumps(run_case(args.case, args.n, args.dim, args.seed)))
        return
    if args.stream:
        print(json.dumps(run_stream(args.n, args.dim, args.stream_queries, args.seed)))
        return
    if args.smoke:
        args.sizes, args.stream_n, args.stream_queries, args.repeats = [300], 3000, 256, 1

    sizes = {n: measure_size(args, n) for n in args.sizes}
    stream = None
    if args.stream_n:
        stream = spawn(
            "--stream",
            "--n",
            str(args.stream_n),
            "--dim",
            str(args.dim),
            "--stream-queries",
            str(args.stream_queries),
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
        )

    rows = []
    for n, cases in sizes.items():
        for method, case in cases.items():
            if "skipped" in case:
                est = f"~{case['estimated_peak_gib']:.0f} GiB est."
                rows.append([str(n), method, "skipped (memory)", "-", est, "-", "-"])
                continue
            r = case["result"]
            rows.append(
                [
                    str(n),
                    method,
                    f"{case['wall']['median']:.2f} s",
                    f"{100 * case['wall']['spread']:.0f}%",
                    _mem(case["peak_mib"]),
                    f"{r['i2t/R@1']:.4f}/{r['t2i/R@1']:.4f}",
                    f"{case['vs_ours']:.2f}x",
                ]
            )
    if stream is not None:
        for method in ("ours", "topk"):
            s = stream[method]
            rows.append(
                [
                    f"{stream['n']} (streamed)",
                    method,
                    f"{s['wall_s_per_1k_queries']:.2f} s/1k queries each way "
                    f"(~{s['extrapolated_wall_s'] / 60:.0f} min for all)",
                    "-",
                    f"{_mem(stream['peak_mib'])} (bound {_mem(stream['stated_bound_mib'])})",
                    "-",
                    f"{s['wall_s_per_1k_queries'] / stream['ours']['wall_s_per_1k_queries']:.2f}x",
                ]
            )

    headlines = []
    for n, cases in sizes.items():
        ratio = cases["ours"]["wall"]["median"] / cases["topk"]["wall"]["median"]
        name = f"recall N={n}: ours / chunked mm+topk"
        if n < SPEED_GOAL_FROM_N:
            headlines.append(common.headline(name, ratio))
            continue
        headlines.append(common.headline(name, ratio, f"<= {SPEED_GOAL}", ratio <= SPEED_GOAL))
    if 50000 in sizes:
        ours = sizes[50000]["ours"]
        t, m = ours["wall"]["median"], ours["peak_mib"]
        headlines.append(
            common.headline("recall N=50k: ours seconds", t, "< 30", t < TIME_GOAL_50K_S)
        )
        headlines.append(
            common.headline("recall N=50k: ours extra MiB", m, "< 1024", m < MEMORY_GOAL_50K_MIB)
        )
    if stream is not None:
        ratio = stream["ours"]["wall_s_per_1k_queries"] / stream["topk"]["wall_s_per_1k_queries"]
        headlines.append(
            common.headline(
                f"recall N={stream['n']} streamed: ours / chunked mm+topk",
                ratio,
                f"<= {SPEED_GOAL}",
                ratio <= SPEED_GOAL,
            )
        )
        within = stream["peak_mib"] <= stream["stated_bound_mib"] * 1.1 + 64
        headlines.append(
            common.headline(
                f"recall N={stream['n']} streamed: peak MiB",
                stream["peak_mib"],
                f"<= stated bound {stream['stated_bound_mib']:.0f} (+10%)",
                within,
            )
        )
    common.write_result(
        args,
        "recall",
        f"CrossModalRecall vs chunked mm+topk, torchmetrics, full sort; D={args.dim}",
        ["N", "method", "time", "spread", "extra memory", "R@1 i2t/t2i", "/ ours"],
        rows,
        headlines,
        {"top_k": list(TOP_K), "dim": args.dim, "sizes": sizes, "stream": stream},
    )


if __name__ == "__main__":
    main()

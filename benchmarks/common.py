"""What every benchmark shares: its command line, timing hygiene and the JSON it keeps.

Each benchmark

* takes ``--threads`` (``torch.set_num_threads``, equal for every side; default 1),
  ``--repeats``, ``--out`` and ``--smoke`` (tiny sizes, seconds, for the test that keeps the
  scripts working; its JSON goes to ``benchmarks/results/smoke/`` unless ``--out`` says
  otherwise, and the results table ignores it);
* runs its sides interleaved, in alternating order (A B, B A, A B, ...), and reports the
  median and the spread of each side's repeats;
* writes a JSON file with the machine (CPU model and its vector/bf16 flags, core count,
  threads, load average, library versions, commit) and the date, a ``headline`` (the
  figures the issue's goals are about, each with its goal) and the printed ``table``;
  ``benchmarks/results_table.py`` turns those files into ``benchmarks/RESULTS.md``.

Timings are wall-clock (``time.perf_counter``); single-process sides also record the
process's CPU time (``time.process_time``), which is less disturbed when other programs share
the machine (it still includes cache and memory contention).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LIBRARIES = (
    "torch",
    "lightning",
    "transformers",
    "torchmetrics",
    "webdataset",
    "numpy",
    "pillow",
    "open-clip-torch",
    "jepa-lightning",
)
FLAG_PREFIXES = ("avx2", "avx512", "amx", "fma")


class Timing(NamedTuple):
    """One measurement: wall-clock seconds, this process's CPU seconds and its minor page
    faults (memory it touched for the first time since the system handed it over)."""

    wall_s: float
    cpu_s: float
    page_faults: float = 0.0


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Stopwatch:
    """Measures wall-clock and process CPU time and page faults between :meth:`start` and
    :meth:`stop`."""

    def __init__(self) -> None:
        self._wall = self._cpu = 0.0
        self._faults = 0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._faults = _page_faults()

    def stop(self) -> Timing:
        return Timing(
            time.perf_counter() - self._wall,
            time.process_time() - self._cpu,
            _page_faults() - self._faults,
        )


def timed(fn: Callable[[], Any]) -> Timing:
    """Runs ``fn`` once and returns how long it took."""
    watch = Stopwatch()
    watch.start()
    fn()
    return watch.stop()


def freeze_heap() -> None:
    """Takes every object alive now out of garbage collection (``gc.freeze``), once before
    the first timed run of a process."""
    # Everything alive now (libraries, models, inputs) leaves the collector's reach: a fresh
    # process's first full collection walks the whole heap (a quarter of a second with
    # lightning and transformers loaded) and would land inside whichever timed run first
    # allocates enough. Once, not before every run: a collection just before a run of a few
    # milliseconds would leave that run with cold caches.
    gc.collect()
    gc.freeze()


def interleave(
    runs: dict[str, Callable[[], Timing]], repeats: int, verbose: bool = True
) -> dict[str, list[Timing]]:
    """Runs every side ``repeats`` times, in alternating order (A B C, C B A, A B C, ...).

    The objects alive at the start are frozen out of garbage collection (``gc.freeze``).

    Args:
        runs: Side name → a function that runs that side once and returns its timing.
        repeats: Runs of each side.
        verbose: Print each timing as it comes.

    Returns:
        Side name → its timings, in run order.
    """
    freeze_heap()
    names = list(runs)
    times: dict[str, list[Timing]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(runs[name]())
            if verbose:
                t = times[name][-1]
                print(
                    f"  repeat {r + 1}/{repeats} {name:>28}: {1e3 * t.wall_s:10.1f} ms wall "
                    f"{1e3 * t.cpu_s:10.1f} ms cpu",
                    flush=True,
                )
    return times


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ``(max - min) / median`` of ``values``."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else 0.0,
        "n": len(values),
    }


def paired_ratios(
    numerator: Sequence[Timing], denominator: Sequence[Timing]
) -> dict[str, dict[str, float]]:
    """:func:`stats` of the per-repeat ratios ``numerator[i] / denominator[i]``, wall and CPU.

    For sides run by :func:`interleave`: the two runs of a repeat are next to each other in
    time, so their ratio cancels the machine's drift between repeats (on a shared VM, the same
    step's time moved by 50% within minutes), which a ratio of medians keeps.
    """
    pairs = list(zip(numerator, denominator, strict=True))
    return {
        "wall": stats([a.wall_s / b.wall_s for a, b in pairs]),
        "cpu": stats([a.cpu_s / b.cpu_s for a, b in pairs]),
    }


def timing_stats(timings: Sequence[Timing], scale: float = 1e3) -> dict[str, Any]:
    """:func:`stats` of the wall and CPU times (in milliseconds by default) and page faults."""
    return {
        "wall": stats([scale * t.wall_s for t in timings]),
        "cpu": stats([scale * t.cpu_s for t in timings]),
        "page_faults": stats([t.page_faults for t in timings]),
        "wall_all": [scale * t.wall_s for t in timings],
    }


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The command line every benchmark shares (add its own options to it).

    Args:
        description: The benchmark's one-line description.
        repeats: The default number of repeats of each side.

    Returns:
        A parser with ``--threads``, ``--repeats``, ``--out`` and ``--smoke``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (all sides)")
    p.add_argument("--repeats", type=int, default=repeats, help="runs of each side")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default results/NAME)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    return p


def setup(args: argparse.Namespace) -> None:
    """Applies ``--threads`` (the same count for every side of the benchmark)."""
    torch.set_num_threads(args.threads)


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and its vector / bf16 / AMX instruction-set flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()  # Linux; elsewhere the platform's name only
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = sorted(f for f in fields.get("flags", "").split() if f.startswith(FLAG_PREFIXES))
    return {
        "model": model,
        "flags": flags,
        "bf16_native": torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """Where and with what a benchmark ran: CPU, GPU, threads, load, libraries, commit."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu_description(),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "versions": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(status) if status is not None else None,
    }


def headline(
    metric: str, value: float, goal: str | None = None, met: bool | None = None, **detail: Any
) -> dict[str, Any]:
    """One figure of the issue's table: what it is, its value and its goal."""
    return {"metric": metric, "value": value, "goal": goal, "met": met, **detail}


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Prints ``rows`` under ``header`` as aligned columns."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for i, line in enumerate(table):
        print(" | ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print()


def write_result(
    args: argparse.Namespace,
    name: str,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    headlines: Sequence[dict[str, Any]],
    details: dict[str, Any],
) -> Path:
    """Prints the table and the headline figures and writes the benchmark's JSON.

    Args:
        args: The parsed command line (``--out``, ``--smoke``, the benchmark's options).
        name: File stem of the result (``results/<name>.json``).
        title: What the benchmark compares, one line.
        header: The table's column names.
        rows: The table's rows (strings, as printed).
        headlines: The figures that the goals are about (see :func:`headline`).
        details: Everything else measured (raw timings, sizes).

    Returns:
        The path written.
    """
    print_table(header, rows)
    for h in headlines:
        goal = f"  (goal {h['goal']}: {'met' if h['met'] else 'NOT met'})" if h["goal"] else ""
        print(f"{h['metric']}: {h['value']:.3f}{goal}")
    out = args.out or (RESULTS / "smoke" if args.smoke else RESULTS) / f"{name}.json"
    result = {
        "benchmark": name,
        "title": title,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": bool(args.smoke),
        "command": " ".join(["python", *_argv()]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "headline": list(headlines),
        "table": {"header": list(header), "rows": [list(r) for r in rows]},
        "details": details,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def _argv() -> list[str]:
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return [str(script), *sys.argv[1:]]


def ms(value: float) -> str:
    """Milliseconds, formatted for a table."""
    return f"{value:.1f} ms" if value < 1e4 else f"{value / 1e3:.2f} s"

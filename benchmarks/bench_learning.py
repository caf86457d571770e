"""Does the default config learn as well in bf16-mixed? Full runs, fp32 against precision auto.

Runs ``jepa-lightning fit --config configs/shapes_tiny.yaml`` to the end (900 steps) once with
``--trainer.precision 32-true`` and once with ``auto`` (bf16-mixed on a CPU or GPU that runs
bf16 natively, else 32-true: the resolved value is recorded), each in its own process with
torch's default thread count (as a user runs it), on the same generated shards, and reads the
validation recall@1 both ways at the last step from the TensorBoard events, with each run's
wall time. Goal (issue 14), for making ``auto`` the config's default: R@1 >= 0.98 both ways
under ``auto``.

Each run takes about 5 minutes on two free cores; ``--smoke`` trains 4 steps on tiny data.

Usage::

    python benchmarks/bench_learning.py [--precisions 32-true auto] [--smoke]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
from steps import DEFAULT_CONFIG
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jepa_lightning.trainer import resolve_precision

GOAL = 0.98
TAGS = ("val/i2t/R@1", "val/t2i/R@1")
SMOKE = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=4",
    "--trainer.limit_val_batches=2",
    "--data.init_args.train_samples=64",
    "--data.init_args.val_samples=32",
    "--data.init_args.batch_size=16",
    "--data.init_args.num_workers=0",
]


def last_values(root: Path) -> dict[str, Any]:
    events = sorted(root.rglob("events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"no TensorBoard events under {root}")
    accumulator = EventAccumulator(str(events[-1]))
    accumulator.Reload()
    out: dict[str, Any] = {}
    for tag in TAGS:
        scalars = accumulator.Scalars(tag)
        out[tag] = {"step": scalars[-1].step, "value": scalars[-1].value}
    return out


def fit(precision: str, data_root: Path, smoke: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp())
    command = [
        sys.executable,
        "-m",
        "jepa_lightning",
        "fit",
        "--config",
        str(DEFAULT_CONFIG),
        f"--trainer.precision={precision}",
        f"--trainer.default_root_dir={root}",
        f"--data.init_args.root={data_root}",
        *(SMOKE if smoke else []),
    ]
    timing = common.timed(lambda: _run(command))
    return {"wall_s": timing.wall_s, "recall": last_values(root)}


def _run(command: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=1)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "auto"])
    args = parser.parse_args()
    if args.smoke:
        args.precisions = ["auto"]  # one short run: the same path as every other precision
    common.setup(args)
    data_root = Path(tempfile.mkdtemp()) / "shapes"
    runs = {p: fit(p, data_root, args.smoke) for p in args.precisions}
    rows, headlines = [], []
    base = runs[args.precisions[0]]["wall_s"]
    for precision, run in runs.items():
        i2t, t2i = (run["recall"][tag] for tag in TAGS)
        resolved = resolve_precision(precision, "cpu")
        rows.append(
            [
                f"{precision} ({resolved})" if resolved != precision else precision,
                str(i2t["step"]),
                f"{i2t['value']:.3f}",
                f"{t2i['value']:.3f}",
                f"{run['wall_s']:.0f} s",
                f"{run['wall_s'] / base:.2f}",
            ]
        )
        worst = min(i2t["value"], t2i["value"])
        headlines.append(
            common.headline(
                f"default config, precision {precision} ({resolved}): min R@1 at the last step",
                worst,
                f">= {GOAL}",
                worst >= GOAL,
            )
        )
    common.write_result(
        args,
        "learning",
        "Default config trained to the end: validation R@1 and run time per precision",
        ["precision", "step", "R@1 i2t", "R@1 t2i", "run time", "time ratio"],
        rows,
        headlines,
        {
            "runs": runs,
            "threads": "torch's default (the runs are jepa-lightning fit as a user runs it)",
        },
    )


if __name__ == "__main__":
    main()

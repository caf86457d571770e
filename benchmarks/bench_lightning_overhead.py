"""Benchmark a Lightning training step against a hand-written PyTorch loop.

Both sides train the default model (``configs/shapes_tiny.yaml``'s ``model``: frozen tiny ViT,
small BERT, 2-layer predictor, its optimizer) from the same initial weights on the same
precomputed batches (collated "shapes" samples in a list, so data loading is excluded from
both), at the config's precision (``auto`` resolved for the CPU) unless ``--precision`` says
otherwise:

* ``lightning``: ``Trainer.fit`` for ``--steps`` steps (logger, progress bar, checkpointing,
  model summary and validation off) with the config's ``log_every_n_steps`` (25). This
  includes ``VLJEPA.training_step``'s bookkeeping (the all-rank non-finite check,
  ``self.log`` of the loss every step and of the loss parts, temperature and learning rates
  on logging steps: the default 27 steps, 2 of them warm-up, time one logging step in 25,
  as a run has).
* ``plain``: ``compute_losses`` under the precision's autocast → ``backward`` →
  ``optimizer.step`` → ``scheduler.step`` → ``zero_grad`` → the objectives'
  ``after_optimizer_step`` (temperature clamp): the same optimizer, groups and schedule as
  ``VLJEPA.configure_optimizers`` (``VLJEPA.build_optimizer``).

Each repeat times the steps after ``--warmup`` steps (setup excluded); repeats alternate
between the two sides (A B, B A, ...). The ratio is the median of the per-repeat ratios
(``common.paired_ratios``): this machine's speed drifts by up to 50% within minutes, and the
two runs of a repeat share the moment. Goal (issue 14): ``lightning / plain <= 1.03``.

Usage::

    python benchmarks/bench_lightning_overhead.py [--steps 27] [--repeats 11] [--threads 1]
"""

from __future__ import annotations

import copy

import common
from steps import build_model, lightning_run, load_config, make_batches, plain_run

from jepa_lightning.allocator import keep_freed_memory
from jepa_lightning.trainer import resolve_precision

GOAL = 1.03


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=11)
    parser.add_argument("--steps", type=int, default=27, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--precision", default=None, help="default: the config's (auto resolved)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.batch_size = 3, 1, 1, 8
    common.setup(args)
    keep_freed_memory()  # as jepa_lightning's Trainer does, for every side alike

    config = load_config()
    precision = resolve_precision(args.precision or config["trainer"].get("precision"), "cpu")
    precision = str(precision or "32-true")
    initial = build_model(config["model"])
    batch_size = args.batch_size or int(config["data"]["init_args"]["batch_size"])
    batches = make_batches(initial, args.steps, batch_size)

    times = common.interleave(
        {
            "lightning": lambda: lightning_run(
                copy.deepcopy(initial),
                batches,
                args.warmup,
                precision,
                log_every_n_steps=int(config["trainer"].get("log_every_n_steps", 50)),
            ),
            "plain": lambda: plain_run(copy.deepcopy(initial), batches, args.warmup, precision),
        },
        args.repeats,
    )
    summary = {name: common.timing_stats(ts) for name, ts in times.items()}
    ratios = common.paired_ratios(times["lightning"], times["plain"])
    ratio, cpu_ratio = ratios["wall"]["median"], ratios["cpu"]["median"]
    rows = [
        [
            name,
            common.ms(s["wall"]["median"]),
            common.ms(s["wall"]["min"]),
            common.ms(s["wall"]["max"]),
            common.ms(s["cpu"]["median"]),
        ]
        for name, s in summary.items()
    ]
    rows.append(
        [
            "lightning / plain, per repeat",
            f"{ratio:.3f}",
            f"{ratios['wall']['min']:.3f}",
            f"{ratios['wall']['max']:.3f}",
            f"{cpu_ratio:.3f}",
        ]
    )
    common.write_result(
        args,
        "lightning_overhead",
        f"Lightning Trainer.fit step vs hand-written loop, default model, {precision}",
        ["side", "median/step", "min", "max", "cpu/step"],
        rows,
        [
            common.headline(
                "Lightning / plain step (wall, per repeat)", ratio, f"<= {GOAL}", ratio <= GOAL
            ),
            common.headline("Lightning / plain step (cpu time, per repeat)", cpu_ratio),
        ],
        {
            "precision": precision,
            "batch_size": batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "ms_per_step": summary,
            "lightning_over_plain_per_repeat": ratios,
        },
    )


if __name__ == "__main__":
    main()

"""Benchmark the default training step: bf16-mixed and fp32, before and after the speed-ups.

Every side runs ``Trainer.fit`` on the default model (``configs/shapes_tiny.yaml``'s
``model``) from the same initial weights over the same precomputed batches (data loading is
in no side; see ``steps.py``):

* ``fp32 before``: ``32-true``, AdamW's per-parameter loop (``fused=False``), the attention
  kernel that PyTorch picks (the state before issue 14; the baseline of every ratio);
* ``bf16 before``: ``bf16-mixed`` with the same optimizer and PyTorch's attention choice
  (its CPU flash-attention backward is slow in bfloat16);
* ``fp32 after``: ``32-true`` with fused AdamW;
* ``bf16 after``: ``bf16-mixed`` with fused AdamW and the predictor's math attention kernel
  under bfloat16 (what the default config, ``precision: auto``, runs on a CPU with native
  bf16).

Repeats alternate their order (A B C D, D C B A, ...); medians and spreads are reported. The
first batch's loss under each precision is given too. Goal (issue 14): ``bf16 after`` at most
0.5 of ``fp32 before``. On a GPU the ratios are very different (tensor cores): this measures
the CPU only.

Usage::

    python benchmarks/bench_precision.py [--steps 12] [--repeats 5] [--threads 1] [--smoke]
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import common
import torch
from steps import build_model, lightning_run, load_config, make_batches

import jepa_lightning.predictor
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.trainer import resolve_precision

GOAL = 0.5
SIDES: dict[str, tuple[str, bool, bool]] = {
    # name: (precision, fused AdamW, math attention kernel under bf16 on the CPU)
    "fp32 before": ("32-true", False, False),
    "bf16 before": ("bf16-mixed", False, False),
    "fp32 after": ("32-true", True, True),
    "bf16 after": ("bf16-mixed", True, True),
}


@contextlib.contextmanager
def attention_choice(math_under_bf16: bool) -> Iterator[None]:
    """The predictor's attention kernel: its own rule, or PyTorch's choice (before)."""
    if math_under_bf16:
        yield
        return
    rule = jepa_lightning.predictor._attention_backend
    jepa_lightning.predictor._attention_backend = lambda hidden: contextlib.nullcontext()
    try:
        yield
    finally:
        jepa_lightning.predictor._attention_backend = rule


def with_optimizer(model: VLJEPA, init_args: dict[str, Any], fused: bool) -> VLJEPA:
    """``model`` with AdamW of the config's arguments, fused or the per-parameter loop."""
    arguments = {**init_args, "fused": fused}
    model.optimizer_factory = lambda groups: torch.optim.AdamW(groups, **arguments)
    return model


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=5)
    parser.add_argument("--steps", type=int, default=12, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.batch_size = 3, 1, 1, 8
    common.setup(args)

    config = load_config()
    initial = build_model(config["model"])
    optimizer_args = dict(config["model"]["init_args"]["optimizer"].get("init_args", {}))
    optimizer_args.pop("fused", None)
    batch_size = args.batch_size or int(config["data"]["init_args"]["batch_size"])
    batches = make_batches(initial, args.steps, batch_size)

    losses = {}
    with torch.no_grad():
        losses["32-true"] = initial.compute_losses(BatchForward(initial.model, batches[0]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses["bf16-mixed"] = initial.compute_losses(BatchForward(initial.model, batches[0]))
    first_loss = {name: value["loss"].item() for name, value in losses.items()}

    def run(precision: str, fused: bool, math: bool) -> Callable[[], common.Timing]:
        def side() -> common.Timing:
            model = with_optimizer(copy.deepcopy(initial), optimizer_args, fused)
            with attention_choice(math):
                return lightning_run(model, batches, args.warmup, precision)

        return side

    times = common.interleave({name: run(*side) for name, side in SIDES.items()}, args.repeats)
    summary = {name: common.timing_stats(ts) for name, ts in times.items()}
    base = summary["fp32 before"]["wall"]["median"]
    base_cpu = summary["fp32 before"]["cpu"]["median"]
    rows = []
    for name, (precision, fused, math) in SIDES.items():
        wall, cpu = summary[name]["wall"], summary[name]["cpu"]
        rows.append(
            [
                name,
                "fused" if fused else "for-loop",
                "math (bf16)" if math else "PyTorch's",
                common.ms(wall["median"]),
                f"{100 * wall['spread']:.0f}%",
                f"{wall['median'] / base:.3f}",
                f"{cpu['median'] / base_cpu:.3f}",
                f"{first_loss[precision]:.4f}",
            ]
        )
    ratio = summary["bf16 after"]["wall"]["median"] / base
    headlines = [
        common.headline(
            "default step, bf16-mixed after / fp32 before (wall)",
            ratio,
            f"<= {GOAL}",
            ratio <= GOAL,
        ),
        common.headline(
            "default step, bf16-mixed before / fp32 before (wall)",
            summary["bf16 before"]["wall"]["median"] / base,
        ),
        common.headline(
            "default step, bf16-mixed after / fp32 before (cpu time)",
            summary["bf16 after"]["cpu"]["median"] / base_cpu,
        ),
    ]
    common.write_result(
        args,
        "precision",
        "Default training step (Trainer.fit): fp32 and bf16-mixed, before and after",
        ["side", "AdamW", "attention", "ms/step", "spread", "/ fp32 before", "cpu ratio", "loss@0"],
        rows,
        headlines,
        {
            "batch_size": batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "auto_precision_here": resolve_precision("auto", "cpu"),
            "first_batch_loss": first_loss,
            "ms_per_step": summary,
        },
    )


if __name__ == "__main__":
    main()

"""Benchmark the default training step: bf16-mixed and fp32, before and after the speed-ups.

Every side runs ``Trainer.fit`` on the default model (``configs/shapes_tiny.yaml``'s
``model``) from the same initial weights over the same precomputed batches (data loading is
in no side; see ``steps.py``):

* ``fp32 before``: ``32-true``, AdamW's per-parameter loop (``fused=False``), the attention
  kernel that PyTorch picks, the X-encoder's patch embedding as a strided convolution and its
  image normalisation in three passes, and the Y-encoder with BERT's dropout (0.1) and BERT's
  whole vocabulary (30522 rows), in a process where ``malloc`` has glibc's defaults: the
  state before issue 14 (the code at 12ec1cf), the baseline of every ratio;
* ``bf16 before``: ``bf16-mixed`` with the same model, optimizer and kernels (the CPU
  flash-attention backward is slow in bfloat16);
* ``fp32 after``: ``32-true``, the config as shipped (fused AdamW, no dropout, the vocabulary
  trimmed to the shapes generator's words and every character: 2040 rows; each distinct
  caption of a batch encoded once) in a process set
  up as the shipped ``Trainer`` sets it up (``allocator.keep_freed_memory``: ``malloc``
  keeps the memory a step frees, instead of paging it in afresh every step);
* ``bf16 after``: ``bf16-mixed``, the config as shipped, with the package's attention
  (``encoders.hf.CPU_BF16_TRAINING_SDPA``: in bfloat16 on the CPU where a backward follows
  or over at most 64 keys, attention as two bfloat16 matrix products around a float32
  softmax instead of the flash kernel); what ``precision: auto`` runs on a CPU with native
  bf16.

The two ``before`` sides run in a process of their own (spawned: a fresh interpreter, so
``malloc`` keeps glibc's defaults there), the ``after`` sides in this one; one side runs at
a time. Repeats alternate their order (A B C D, D C B A, ...); medians and spreads are
reported, and each ratio against ``fp32 before`` is the median of the per-repeat ratios
(``common.paired_ratios``: the runs of a repeat share the machine's momentary speed). The
per-sample ratio is one of differences of medians (its two batches run in separate repeats).
The first batch's loss under each precision is given too. Goal (issue 14): ``bf16 after`` at
most 0.5 of ``fp32 before``. On a GPU the ratios are very different (tensor cores): this
measures the CPU only.

``fp32 before`` and ``bf16 after`` are timed at a small batch too (``--small-batch``): the
step's fixed costs (operator dispatch, the optimizer over every parameter), and by difference
with the default batch its per-sample work, each with its own ratio.

Usage::

    python benchmarks/bench_precision.py [--steps 12] [--repeats 15] [--small-batch 8] [--threads 1]
        [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any
from unittest import mock

import common
import torch
from steps import build_model, lightning_run, load_config, make_batches
from torch import Tensor
from transformers import PretrainedConfig

import jepa_lightning.encoders.text
import jepa_lightning.encoders.vision
import jepa_lightning.predictor
from jepa_lightning.allocator import keep_freed_memory
from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.encoders.hf import CPU_BF16_TRAINING_SDPA
from jepa_lightning.encoders.text import masked_mean
from jepa_lightning.models import BatchForward, VLJEPAModel
from jepa_lightning.modules import VLJEPA
from jepa_lightning.trainer import resolve_precision

GOAL = 0.5
BERT_TOKENIZER = "jepa_lightning:bert-base-uncased"
SIDES: dict[str, tuple[str, bool]] = {
    # name: (precision, after issue 14)
    "fp32 before": ("32-true", False),
    "bf16 before": ("bf16-mixed", False),
    "fp32 after": ("32-true", True),
    "bf16 after": ("bf16-mixed", True),
}


KERNEL_USERS = (
    jepa_lightning.predictor,
    jepa_lightning.encoders.text,
    jepa_lightning.encoders.vision,
)


def pytorch_attention(model: VLJEPA) -> VLJEPA:
    """``model`` with ``transformers``' SDPA attention in every part, as before issue 14."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if (
            isinstance(config, PretrainedConfig)
            and config._attn_implementation == CPU_BF16_TRAINING_SDPA
        ):
            config._attn_implementation = "sdpa"
    return model


def normalize_in_three_passes(self: VisionEncoder, images: Tensor) -> Tensor:
    """``VisionEncoder.normalize`` before issue 14: convert, then subtract, then divide."""
    dtype = self.image_mean.dtype
    pixels = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
    return (pixels - self.image_mean) / self.image_std


def embed_every_row(self: VLJEPAModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``VLJEPAModel.embed_text`` before issue 14: every row encoded, repeated texts too."""
    tokens, mask = self.text_encoder({"input_ids": input_ids, "attention_mask": attention_mask})
    return self.text_projection(masked_mean(tokens, mask))


@contextlib.contextmanager
def step_code(after: bool) -> Iterator[None]:
    """The step's code after issue 14 (as shipped), or before it: PyTorch's attention kernels
    instead of the package's rule (``attention_kernel``), the image normalisation in three
    passes, and every caption encoded, repeats too."""
    if after:
        yield
        return
    with contextlib.ExitStack() as stack:
        for module in KERNEL_USERS:
            stack.enter_context(
                mock.patch.object(
                    module,
                    "attention_kernel",
                    lambda config, device, dtype: contextlib.nullcontext(),
                )
            )
        stack.enter_context(
            mock.patch.object(VisionEncoder, "normalize", normalize_in_three_passes)
        )
        stack.enter_context(mock.patch.object(VLJEPAModel, "embed_text", embed_every_row))
        yield


def build_before_issue_14(section: dict[str, Any]) -> VLJEPA:
    """The config's model as it was before issue 14: the Y-encoder with BERT's dropout (0.1)
    and BERT's whole vocabulary, the X-encoder's patch embedding a strided convolution and
    ``transformers``' SDPA attention in every part."""
    before = copy.deepcopy(section)
    text_encoder = before["init_args"]["text_encoder"]["init_args"]
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        text_encoder["model"].pop(key, None)
    text_encoder["tokenizer"] = BERT_TOKENIZER
    with mock.patch.object(jepa_lightning.encoders.vision, "use_patch_linear", lambda model: 0):
        return pytorch_attention(build_model(before))


def with_optimizer(model: VLJEPA, init_args: dict[str, Any], fused: bool) -> VLJEPA:
    """``model`` with AdamW of the config's arguments, fused or the per-parameter loop."""
    arguments = {**init_args, "fused": fused}
    model.optimizer_factory = lambda groups: torch.optim.AdamW(groups, **arguments)
    return model


class CodeVersion:
    """The default model, its optimizer arguments and batches as of one version of the code.

    Args:
        after: The code as shipped (True) or as before issue 14.
        args: The benchmark's arguments (``--steps``, ``--warmup``, ``--batch-size``,
            ``--small-batch``).
    """

    def __init__(self, after: bool, args: argparse.Namespace) -> None:
        config = load_config()
        self.after = after
        self.warmup = args.warmup
        section = config["model"]
        self.initial = build_model(section) if after else build_before_issue_14(section)
        self.optimizer_args = dict(section["init_args"]["optimizer"].get("init_args", {}))
        self.optimizer_args.pop("fused", None)
        self.batch_size = args.batch_size or int(config["data"]["init_args"]["batch_size"])
        # The same samples on both versions, tokenized by each version's tokenizer.
        self.batches = {
            self.batch_size: make_batches(self.initial, args.steps, self.batch_size),
            args.small_batch: make_batches(self.initial, args.steps, args.small_batch),
        }
        self.vocabulary = int(self.initial.model.text_encoder.model.config.vocab_size)

    def run(self, precision: str, batch_size: int) -> common.Timing:
        """Time per step of ``Trainer.fit`` in ``precision`` over the batches of ``batch_size``."""
        model = with_optimizer(copy.deepcopy(self.initial), self.optimizer_args, self.after)
        with step_code(self.after):
            return lightning_run(model, self.batches[batch_size], self.warmup, precision)


# The code before issue 14 in its own process (``start_before``): there ``malloc`` has
# glibc's defaults, as it had before; the shipped ``Trainer`` sets it up in its process
# (``allocator.keep_freed_memory``), and so does ``main`` for the shipped sides.
_before: CodeVersion | None = None


def start_before(args: argparse.Namespace) -> None:
    """Builds the code version before issue 14 in this (spawned) process."""
    global _before
    common.setup(args)
    _before = CodeVersion(after=False, args=args)
    common.freeze_heap()


def run_before(precision: str, batch_size: int) -> common.Timing:
    """:meth:`CodeVersion.run` of the version :func:`start_before` built."""
    assert _before is not None, "start_before first"
    return _before.run(precision, batch_size)


def before_vocabulary() -> int:
    """The Y-encoder's vocabulary size of the version :func:`start_before` built."""
    assert _before is not None, "start_before first"
    return _before.vocabulary


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=15)
    parser.add_argument("--steps", type=int, default=12, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--small-batch", type=int, default=8, help="batch of the fixed costs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.batch_size, args.small_batch = 3, 1, 1, 8, 2
    common.setup(args)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: glibc's defaults
    with ProcessPoolExecutor(1, spawn, initializer=start_before, initargs=(args,)) as before:
        vocabulary = {False: before.submit(before_vocabulary).result()}
        keep_freed_memory()  # as the shipped Trainer does
        shipped = CodeVersion(after=True, args=args)
        vocabulary[True] = shipped.vocabulary
        batch_size = shipped.batch_size

        model = shipped.initial.eval()  # the first batch's loss, without dropout's noise
        with torch.no_grad():
            first = shipped.batches[batch_size][0]
            losses = {"32-true": model.compute_losses(BatchForward(model.model, first))}
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses["bf16-mixed"] = model.compute_losses(BatchForward(model.model, first))
        first_loss = {name: value["loss"].item() for name, value in losses.items()}

        def run(name: str, batch: int) -> Callable[[], common.Timing]:
            precision, after = SIDES[name]
            if after:
                return lambda: shipped.run(precision, batch)
            return lambda: before.submit(run_before, precision, batch).result()

        times = common.interleave({name: run(name, batch_size) for name in SIDES}, args.repeats)
        small_sides = ("fp32 before", "bf16 after")
        small_times = common.interleave(
            {name: run(name, args.small_batch) for name in small_sides}, args.repeats
        )
    summary = {name: common.timing_stats(ts) for name, ts in times.items()}
    small = {name: common.timing_stats(ts) for name, ts in small_times.items()}
    ratios = {name: common.paired_ratios(ts, times["fp32 before"]) for name, ts in times.items()}
    small_ratios = {
        name: common.paired_ratios(ts, small_times["fp32 before"])
        for name, ts in small_times.items()
    }

    def row(
        name: str, batch: int, stats: dict[str, Any], against_base: dict[str, Any], loss: bool
    ) -> list[str]:
        """A side's table row, its ratios against ``fp32 before`` at the same batch."""
        precision, after = SIDES[name]
        wall, ratio = stats[name]["wall"], against_base[name]
        return [
            name,
            str(batch),
            "fused" if after else "for-loop",
            "bf16 eager: backward, <= 64 keys" if after else "PyTorch's",
            "matmul, 1 pass" if after else "conv, 3 passes",
            "keeps freed" if after else "glibc default",
            "0" if after else "0.1",
            str(vocabulary[after]),
            "once" if after else "each",
            common.ms(wall["median"]),
            f"{100 * wall['spread']:.0f}%",
            f"{stats[name]['page_faults']['median']:.0f}",
            f"{ratio['wall']['median']:.3f}",
            f"{ratio['cpu']['median']:.3f}",
            f"{first_loss[precision]:.4f}" if loss else "",
        ]

    rows = [row(name, batch_size, summary, ratios, loss=True) for name in SIDES]
    rows += [row(name, args.small_batch, small, small_ratios, loss=False) for name in small_sides]

    def per_sample(name: str) -> float:
        return float(summary[name]["wall"]["median"] - small[name]["wall"]["median"])

    ratio = ratios["bf16 after"]["wall"]["median"]
    headlines = [
        common.headline(
            "default step, bf16-mixed after / fp32 before (wall)",
            ratio,
            f"<= {GOAL}",
            ratio <= GOAL,
        ),
        common.headline(
            "default step, bf16-mixed before / fp32 before (wall)",
            ratios["bf16 before"]["wall"]["median"],
        ),
        common.headline(
            "default step, bf16-mixed after / fp32 before (cpu time)",
            ratios["bf16 after"]["cpu"]["median"],
        ),
        common.headline(
            f"fixed costs (batch {args.small_batch}), bf16-mixed after / fp32 before (wall)",
            small_ratios["bf16 after"]["wall"]["median"],
        ),
        common.headline(
            f"per-sample work (batch {batch_size} minus {args.small_batch}), "
            "bf16-mixed after / fp32 before (wall)",
            per_sample("bf16 after") / per_sample("fp32 before"),
        ),
    ]
    common.write_result(
        args,
        "precision",
        "Default training step (Trainer.fit): fp32 and bf16-mixed, before and after",
        [
            "side",
            "batch",
            "AdamW",
            "attention",
            "X patches, normalisation",
            "malloc",
            "Y dropout",
            "Y vocabulary",
            "repeated captions",
            "ms/step",
            "spread",
            "page faults/step",
            "/ fp32 before",
            "cpu ratio",
            "loss@0",
        ],
        rows,
        headlines,
        {
            "batch_size": batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "small_batch": args.small_batch,
            "ms_per_step_small_batch": small,
            "auto_precision_here": resolve_precision("auto", "cpu"),
            "first_batch_loss": first_loss,
            "ms_per_step": summary,
        },
    )


if __name__ == "__main__":
    main()

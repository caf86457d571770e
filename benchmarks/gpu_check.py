"""Paper-scale VL-JEPA on GPUs: training samples/s and peak memory, in one short run.

The model has the paper's shapes (``configs/vl_jepa_vitl.yaml``), built from config dicts
with random weights, since nothing can be downloaded on a lent GPU machine:

* X-encoder: a frozen V-JEPA 2 ViT-L (``vjepa2``: 24 layers, 1024 wide, 256 px, 16 px
  patches: 256 tokens per image);
* Y-encoder: EmbeddingGemma-300M's shape (``gemma3_text``: 24 layers, 768 wide, bidirectional,
  a 262144-token vocabulary), trained at 0.05x the learning rate; captions up to 128 tokens
  (the packaged BERT tokenizer's ids; any ids below the vocabulary size do);
* predictor: 8 Llama-3.2-1B layers (2048 wide, 32 heads, 8 key/value heads, 8192 MLP);
* a 1536-d embedding space, caption InfoNCE, AdamW (fused where the device has it).

Cases, each in its own process (``--case``), ``Trainer.fit`` over generated shapes batches
held in memory (data loading is not measured), ``--warmup`` untimed steps then ``--steps``
timed ones (the GPU synchronised at both ends):

* ``bf16``: one device, ``bf16-mixed``;
* ``bf16+ckpt``: the same with activation checkpointing (predictor and Y-encoder layers);
* ``ddp``: every visible device, DDP (``find_unused_parameters=False``), ``bf16-mixed``.

For each: samples/s (all ranks together), seconds per step and the peak memory that torch
allocated on a device (CUDA; on the CPU the process's peak resident memory). A case that
runs out of memory is reported as such; the others still run.

``--smoke`` runs the same code on the CPU with tiny shapes (and DDP over 2 CPU processes),
so that the script is known to work before a GPU is lent. ``benchmarks/gpu_check.sh`` runs
it on a GPU machine.

Usage::

    python benchmarks/gpu_check.py [--batch-size 64] [--steps 8] [--warmup 3] [--smoke]
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from steps import Batches, make_batches
from transformers import AutoConfig

from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE

TOKENIZER = "jepa_lightning:bert-base-uncased"
PAPER: dict[str, Any] = {
    "x_encoder": {
        "model_type": "vjepa2",
        "crop_size": 256,
        "patch_size": 16,
        "tubelet_size": 2,
        "frames_per_clip": 64,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "mlp_ratio": 4.0,
    },
    "text_encoder": {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 768,
        "intermediate_size": 1152,
        "num_hidden_layers": 24,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 2048,
        "sliding_window": 512,
        "use_bidirectional_attention": True,
    },
    "predictor_lm": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 8,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 8,  # the predictor drops the LM's token embeddings
        "max_position_embeddings": 2048,
    },
    "max_length": 128,
    "embed_dim": 1536,
}
TINY: dict[str, Any] = {
    "x_encoder": {
        **PAPER["x_encoder"],
        "crop_size": 32,
        "patch_size": 8,
        "hidden_size": 24,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "pred_hidden_size": 16,
        "pred_num_hidden_layers": 1,
        "pred_num_attention_heads": 2,
    },
    "text_encoder": {
        **PAPER["text_encoder"],
        "vocab_size": 30522,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 16,
        "sliding_window": 16,
    },
    "predictor_lm": {
        **PAPER["predictor_lm"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
    "max_length": 16,
    "embed_dim": 16,
}
CASES = {"bf16": (False, False), "bf16+ckpt": (True, False), "ddp": (False, True)}


def text_config(shapes: dict[str, Any]) -> dict[str, Any]:
    """The Y-encoder's config dict, without bidirectional attention before transformers 4.56.

    Older releases do not know the key (EmbeddingGemma's); the layers' shapes and cost are
    the same.
    """
    config = copy.deepcopy(shapes["text_encoder"])
    if not hasattr(AutoConfig.for_model("gemma3_text"), "use_bidirectional_attention"):
        config.pop("use_bidirectional_attention", None)
    return config


def build(shapes: dict[str, Any], checkpointing: bool) -> VLJEPA:
    """VL-JEPA of these shapes with random weights."""
    torch.manual_seed(0)
    return VLJEPA(
        x_encoder=VisionEncoder(model=copy.deepcopy(shapes["x_encoder"]), frozen=True),
        text_encoder=TextEncoder(
            model=text_config(shapes),
            tokenizer=TOKENIZER,
            max_length=shapes["max_length"],
            lr_multiplier=0.05,
        ),
        embed_dim=shapes["embed_dim"],
        predictor_lm=copy.deepcopy(shapes["predictor_lm"]),
        objectives=[CaptionInfoNCE()],
        gradient_checkpointing=checkpointing,
    )


class SyncedStepTimer(Callback):
    """Times the steps after ``warmup``, with the device synchronised at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.watch = common.Stopwatch()
        self.timing = common.Timing(0.0, 0.0)

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.watch.start()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync()
        self.timing = self.watch.stop()


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_case(args: Any) -> dict[str, Any] | None:
    """One case in this process (and, for DDP, the processes Lightning starts)."""
    checkpointing, ddp = CASES[args.case]
    gpu = torch.cuda.is_available()
    devices = (torch.cuda.device_count() if gpu else 2) if ddp else 1
    model = build(TINY if args.smoke else PAPER, checkpointing)
    distinct = make_batches(model, min(4, args.warmup + args.steps), args.batch_size)
    batches = [distinct[i % len(distinct)] for i in range(args.warmup + args.steps)]
    timer = SyncedStepTimer(args.warmup)
    trainer = Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=devices,
        strategy="ddp" if ddp else "auto",
        precision="bf16-mixed",
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.fit(model, train_dataloaders=Batches(batches))
    except torch.cuda.OutOfMemoryError as error:
        return {"case": args.case, "devices": devices, "error": f"out of memory: {error}"[:300]}
    if not trainer.is_global_zero:
        return None
    step_s = timer.timing.wall_s / args.steps
    return {
        "case": args.case,
        "devices": devices,
        "batch_size_per_device": args.batch_size,
        "step_s": step_s,
        "samples_per_s": args.batch_size * devices / step_s,
        "peak_memory_gib": peak_memory_gib(),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }


def spawn(args: Any, case: str, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", case, "--case-out", str(out)]
    command += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    command += ["--smoke"] if args.smoke else []
    print(f"=== {case}", flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not out.exists():
        return {"case": case, "error": f"exit status {done.returncode}"}
    return json.loads(out.read_text())


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=1)
    parser.add_argument("--batch-size", type=int, default=64, help="per device")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--case", choices=list(CASES), help="(internal) run one case")
    parser.add_argument("--case-out", type=Path, help="(internal) its JSON")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.steps, args.warmup = 4, 2, 1
    common.setup(args)
    if args.case is not None:
        result = run_case(args)
        if result is not None:
            args.case_out.write_text(json.dumps(result))
        return

    parts = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_{os.getpid()}"
    parts.mkdir(parents=True, exist_ok=True)
    results = [spawn(args, case, parts / f"{case}.json") for case in args.cases]
    rows, headlines = [], []
    for r in results:
        if "error" in r:
            rows.append([r["case"], str(r.get("devices", "-")), "-", "-", "-", r["error"][:60]])
            continue
        rows.append(
            [
                r["case"],
                str(r["devices"]),
                f"{r['samples_per_s']:.1f}",
                f"{r['step_s']:.3f}",
                f"{r['peak_memory_gib']:.1f}",
                "",
            ]
        )
        name = f"paper-scale {r['case']} on {r['devices']} device(s)"
        headlines.append(common.headline(f"{name}: samples/s", r["samples_per_s"]))
        headlines.append(common.headline(f"{name}: peak GiB per device", r["peak_memory_gib"]))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)"
    common.write_result(
        args,
        "gpu_check",
        f"Paper-scale VL-JEPA training on {device}: bf16-mixed, checkpointing, DDP",
        ["case", "devices", "samples/s", "s/step", "peak GiB/device", "note"],
        rows,
        headlines,
        {"shapes": TINY if args.smoke else PAPER, "results": results},
    )


if __name__ == "__main__":
    main()

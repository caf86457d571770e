"""Stress harness: many short 2-rank DDP fits on the CPU; counts the ones that never finish.

Each fit is a fresh ``python stress_ddp.py --one-fit`` process: Lightning's DDP launcher starts
the second rank itself (gloo), as ``jepa-lightning fit`` does on one machine. A fit trains a
tiny VL-JEPA for a few short epochs on uneven shards with unreadable samples
(``num_workers > 0``, non-persistent workers: every epoch and every validation pass starts
new loader workers), validates after every epoch, and runs the threads a real run has (the
progress bar's monitor, the TensorBoard writer, gloo's).

With ``--cli`` a fit is instead ``python -m jepa_lightning fit`` with a config of the same
model and data plus the default config's callbacks (checkpoint, embedding monitor, gradient
norms, TensorBoard images): the way a user starts a run, with the command's rich progress bar,
whose refresh thread writes to the output many times a second.

A fit that has not finished after ``--fit-timeout`` seconds counts as a hang: its processes
(the process group the harness started) first get ``SIGUSR1`` (``SIGABRT`` with ``--cli``), on
which every rank dumps the stacks of all its threads (``faulthandler``) into
``<out>_dumps/fit<N>.*``, then ``SIGKILL``. A fit that exits with an error counts as failed
(its output tail is kept).

The fits run one after another. Usage::

    python benchmarks/stress_ddp.py --fits 100 --out benchmarks/results/stress_ddp.json
    python benchmarks/stress_ddp.py --cli --fits 100 --out benchmarks/results/stress_ddp_cli.json
    python benchmarks/stress_ddp.py --smoke          # 1 fit

To run it against another checkout of the package (e.g. the code before a fix), put that
checkout's ``src`` first on ``PYTHONPATH``; the harness reports which package it ran.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
SHARD_SIZES = (3, 41, 17, 9)  # uneven, as in the acceptance runs
BAD_SAMPLES = {5: "corrupt_image", 20: "no_caption", 50: "empty_caption"}
BATCH_SIZE = 4
TINY_VIT = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 16,
    "max_position_embeddings": 128,
}


def tokenizer_folder() -> str:
    """The bundled BERT tokenizer, wherever this checkout keeps it."""
    for folder in (
        REPO / "src" / "jepa_lightning" / "assets" / "tokenizers" / "bert-base-uncased",
        REPO / "configs" / "tokenizers" / "bert-base-uncased",
    ):
        if (folder / "vocab.txt").is_file():
            return str(folder)
    raise FileNotFoundError("no bert-base-uncased tokenizer folder in this checkout")


def write_shards(folder: Path) -> None:
    """Uneven shards with a corrupt image, a missing and an empty caption, and an index."""
    import io

    import webdataset as wds
    from PIL import Image

    from jepa_lightning.data.index import INDEX_FILENAME, ShardIndex

    folder.mkdir(parents=True, exist_ok=True)
    shards, number = [], 0
    for shard_number, size in enumerate(SHARD_SIZES):
        name = f"shard-{shard_number:04d}.tar"
        with wds.TarWriter(str(folder / name)) as writer:
            for _ in range(size):
                buffer = io.BytesIO()
                colour = (number * 37 % 256, number * 11 % 256, 90)
                Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
                sample = {"__key__": f"s{number:05d}", "jpg": buffer.getvalue()}
                sample["txt"] = f"sample number {number}".encode()
                kind = BAD_SAMPLES.get(number)
                if kind == "corrupt_image":
                    sample["jpg"] = sample["jpg"][:30]
                elif kind == "no_caption":
                    del sample["txt"]
                elif kind == "empty_caption":
                    sample["txt"] = b""
                writer.write(sample)
                number += 1
        shards.append((name, size))
    index = ShardIndex(str(folder), shards, sum(SHARD_SIZES)).to_dict()
    (folder / INDEX_FILENAME).write_text(json.dumps(index))


def one_fit(shards: str, out_dir: str) -> None:
    """One fit, on both ranks (Lightning re-runs this command for rank 1)."""
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from jepa_lightning.data import WebDataModule
    from jepa_lightning.encoders import TextEncoder, VisionEncoder
    from jepa_lightning.modules import VLJEPA

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    dump = open(Path(out_dir) / f"rank{rank}.stacks.txt", "w")  # noqa: SIM115 (open until exit)
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = VLJEPA(
        x_encoder=VisionEncoder(TINY_VIT),
        text_encoder=TextEncoder(TINY_BERT, tokenizer=tokenizer_folder()),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        warmup_steps=2,
    )
    data = WebDataModule(
        collator=model.batch_collator(),
        train_shards=shards,
        val_shards=shards,
        batch_size=BATCH_SIZE,
        samples_per_epoch=2 * BATCH_SIZE * WORLD_SIZE,  # 2 steps per epoch: many loader starts
        resampled=False,
        num_workers=2,
        shuffle_buffer=8,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy="ddp",
        max_steps=6,
        num_sanity_val_steps=2,
        logger=TensorBoardLogger(out_dir, name="tb"),
        enable_checkpointing=False,
        enable_progress_bar=True,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(model, data)
    if trainer.global_rank == 0:
        import jepa_lightning

        result = {"steps": trainer.global_step, "package": jepa_lightning.__file__}
        (Path(out_dir) / "result.json").write_text(json.dumps(result))


def write_cli_config(path: Path, shards: str) -> None:
    """The ``--cli`` fit's config: the same fit, with the default config's callbacks."""
    model = {
        "class_path": "jepa_lightning.modules.VLJEPA",
        "init_args": {
            "x_encoder": {
                "class_path": "jepa_lightning.encoders.VisionEncoder",
                "init_args": {"model": TINY_VIT},
            },
            "text_encoder": {
                "class_path": "jepa_lightning.encoders.TextEncoder",
                "init_args": {"model": TINY_BERT, "tokenizer": tokenizer_folder()},
            },
            "embed_dim": 16,
            "predictor_lm": TINY_LLAMA,
            "warmup_steps": 2,
        },
    }
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"monitor": "val/recall_mean", "mode": "max", "save_last": True},
        },
        {"class_path": "jepa_lightning.callbacks.EmbeddingMonitor"},
        {"class_path": "jepa_lightning.callbacks.GradNormMonitor"},
        {
            "class_path": "jepa_lightning.callbacks.TensorBoardImages",
            "init_args": {"max_samples": 16, "num_queries": 2, "top_k": 2},
        },
    ]
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": WORLD_SIZE,
            "strategy": "ddp",
            "max_steps": 6,
            "num_sanity_val_steps": 2,
            "log_every_n_steps": 1,
            "callbacks": callbacks,
        },
        "model": model,
        "data": {
            "class_path": "jepa_lightning.data.WebDataModule",
            "init_args": {
                "train_shards": shards,
                "val_shards": shards,
                "batch_size": BATCH_SIZE,
                "samples_per_epoch": 2 * BATCH_SIZE * WORLD_SIZE,
                "resampled": False,
                "num_workers": 2,
                "shuffle_buffer": 8,
            },
        },
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML


def run_fit(
    number: int, shards: str, work: Path, timeout_s: float, dumps: Path, cli_config: Path | None
) -> dict[str, Any]:
    """Runs one fit in its own process group; kills the group at the deadline."""
    out_dir = work / f"fit{number}"
    out_dir.mkdir()
    log_path = out_dir / "output.txt"
    env = dict(os.environ)
    if cli_config is None:
        command = [sys.executable, str(Path(__file__).resolve()), "--one-fit", shards, str(out_dir)]
        dump_signal = signal.SIGUSR1
    else:
        command = [sys.executable, "-m", "jepa_lightning", "fit", "--config", str(cli_config)]
        command += ["--trainer.default_root_dir", str(out_dir)]
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT: every Python process dumps its stacks
        dump_signal = signal.SIGABRT
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            code = process.wait(timeout=timeout_s)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            status, code = "hung", None
            os.killpg(process.pid, dump_signal)  # every rank dumps its stacks
            time.sleep(3)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group this harness started
            except ProcessLookupError:
                pass
            process.wait()
    seconds = time.monotonic() - start
    record: dict[str, Any] = {"fit": number, "status": status, "exit_code": code, "s": seconds}
    result = out_dir / "result.json"
    if result.is_file():
        record.update(json.loads(result.read_text()))
    if status != "ok":
        dumps.mkdir(parents=True, exist_ok=True)
        tail = log_path.read_text(errors="replace")[-200_000 if status == "hung" else -4000 :]
        (dumps / f"fit{number}.output.txt").write_text(tail)
        for rank in range(WORLD_SIZE):
            stacks = out_dir / f"rank{rank}.stacks.txt"
            if stacks.is_file():
                (dumps / f"fit{number}.rank{rank}.txt").write_text(stacks.read_text())
    return record


def summary_headline(label: str, fits: int, counts: dict[str, int]) -> list[dict[str, Any]]:
    """The figures ``benchmarks/RESULTS.md`` lists for a run (see ``results_table.py``)."""
    name = f"{label}: " if label else ""
    return [
        {"metric": f"{name}2-rank fits that hung, of {fits}", "value": counts["hung"]},
        {"metric": f"{name}2-rank fits that failed, of {fits}", "value": counts["failed"]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=100, help="number of fits")
    parser.add_argument("--fit-timeout", type=float, default=300.0, help="seconds per fit")
    parser.add_argument("--smoke", action="store_true", help="1 fit")
    parser.add_argument("--cli", action="store_true", help="fit with python -m jepa_lightning")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stress_ddp.json"))
    parser.add_argument("--one-fit", nargs=2, metavar=("SHARDS", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_fit:
        one_fit(*args.one_fit)
        return
    fits = 1 if args.smoke else args.fits
    out = Path(args.out)
    dumps = out.parent / (out.stem + "_dumps")
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_shards(work / "shards")
        cli_config = work / "fit.yaml" if args.cli else None
        if cli_config is not None:
            write_cli_config(cli_config, str(work / "shards"))
        for number in range(fits):
            record = run_fit(
                number, str(work / "shards"), work, args.fit_timeout, dumps, cli_config
            )
            records.append(record)
            print(
                f"fit {number + 1}/{fits}: {record['status']} in {record['s']:.1f} s",
                flush=True,
            )
    import jepa_lightning

    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "hung", "failed")}
    summary = {
        "benchmark": "stress_ddp_cli" if args.cli else "stress_ddp",
        "headline": summary_headline(args.label, fits, counts),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "label": args.label,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "fits": fits,
        "fit_timeout_s": args.fit_timeout,
        "counts": counts,
        "mode": "cli" if args.cli else "direct",
        "harness_package": jepa_lightning.__file__,  # what the fits import (same sys.path)
        "packages": sorted({str(r.get("package")) for r in records if r.get("package")}),
        "median_fit_s": sorted(r["s"] for r in records)[len(records) // 2],
        "records": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print("\n| fits | ok | hung | failed | median fit (s) |\n| --- | --- | --- | --- | --- |")
    print(
        f"| {fits} | {counts['ok']} | {counts['hung']} | {counts['failed']} "
        f"| {summary['median_fit_s']:.1f} |"
    )
    print(f"written {out}" + (f"; stacks of hung/failed fits in {dumps}" if dumps.exists() else ""))


if __name__ == "__main__":
    main()

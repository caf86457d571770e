from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import tiny_shapes_data
from lightning.pytorch import Trainer
from PIL import Image
from shard_factory import CORRUPT_IMAGE, NO_CAPTION, TRUNCATED, write_shards
from torch import Tensor

from jepa_lightning.data import PairCollator, WebDataModule
from jepa_lightning.encoders.vision import ImageCodec
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.convert import convert_folder


def _attach(data: WebDataModule, world_size: int = 1, rank: int = 0) -> None:
    data.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=rank, world_size=world_size, current_epoch=0
    )


def _trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    return Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_missing_shard_fails_before_training(tmp_path: Path) -> None:
    write_shards(tmp_path, (3,), index=False)
    data = WebDataModule(train_shards=str(tmp_path / "shard-{0000..0002}.tar"))
    _attach(data)
    with pytest.raises(FileNotFoundError, match=r"data\.train_shards: 2 of 3 shards"):
        data.train_dataloader()


def test_too_few_shards_without_resampling_fails(tmp_path: Path) -> None:
    write_shards(tmp_path, (7, 50, 13))
    data = WebDataModule(train_shards=str(tmp_path), batch_size=4, resampled=False, num_workers=2)
    _attach(data, world_size=2)
    with pytest.raises(ValueError, match=r"3 shards, fewer than the 2 ranks x 2 workers"):
        data.train_dataloader()


def test_epoch_length_needs_an_index_or_a_config(tmp_path: Path) -> None:
    write_shards(tmp_path, (5, 5), index=False)
    data = WebDataModule(train_shards=str(tmp_path), batch_size=4)
    _attach(data)
    with pytest.raises(ValueError, match="samples_per_epoch is required"):
        data.train_dataloader()
    data = WebDataModule(train_shards=str(tmp_path), batch_size=4, samples_per_epoch=3)
    _attach(data)
    with pytest.raises(ValueError, match="less than one batch of 4 on each of 1 ranks"):
        data.train_dataloader()


def test_loaders_need_the_model_collator(tmp_path: Path) -> None:
    write_shards(tmp_path, (4,))
    data = WebDataModule(train_shards=str(tmp_path), val_shards=str(tmp_path), batch_size=2)
    _attach(data)
    for loader in (data.train_dataloader, data.val_dataloader):
        with pytest.raises(ValueError, match=r"data\.collator is not set.*batch_collator"):
            loader()


def test_train_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="one weight each"):
        WebDataModule(train_shards="a", train_weights=[1.0])
    with pytest.raises(ValueError, match="not all 0"):
        WebDataModule(train_shards=["a", "b"], train_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="needs data.resampled: true"):
        WebDataModule(train_shards=["a", "b"], train_weights=[1.0, 2.0], resampled=False)


def test_train_weights_mix_sources_by_samples(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    write_shards(small, (4, 4), image_size=32)
    write_shards(large, (40,), image_size=32)
    data = WebDataModule(
        PairCollator(ImageCodec(32)),
        train_shards=[str(small), str(large)],
        train_weights=[1.0, 1.0],
        batch_size=8,
        samples_per_epoch=800,
        num_workers=0,
    )
    _attach(data)
    stream = data.train_dataloader().dataset
    # Same share of samples: each small shard is drawn 5x as often as the large one.
    assert stream.cum_weights == pytest.approx([1 / 8, 2 / 8, 2 / 8 + 1 / 40])


BAD = {15: CORRUPT_IMAGE, 31: NO_CAPTION, 47: TRUNCATED}


def test_training_on_corrupt_shards_skips_and_counts(tmp_path: Path, tiny_model_kwargs) -> None:
    write_shards(tmp_path, (16, 16, 16), image_size=32, bad=BAD)
    model = VLJEPA(**tiny_model_kwargs)
    data = WebDataModule(
        model.batch_collator(),
        train_shards=str(tmp_path),
        val_shards=str(tmp_path),
        batch_size=4,
        resampled=False,
        num_workers=0,
        shuffle_buffer=4,
    )
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, data)
    assert trainer.global_step == 12 == trainer.num_training_batches
    assert trainer.callback_metrics["data/skipped"].item() == len(BAD)
    assert trainer.callback_metrics["val/skipped"].item() == len(BAD)  # the same shards
    assert math.isfinite(trainer.callback_metrics["val/loss"].item())


def test_training_stopped_mid_epoch_logs_the_skips_so_far(
    tmp_path: Path, tiny_model_kwargs
) -> None:
    write_shards(tmp_path, (16, 16, 16), image_size=32, bad=BAD)  # each shard's last is bad
    model = VLJEPA(**tiny_model_kwargs)
    data = WebDataModule(
        model.batch_collator(),
        train_shards=str(tmp_path),
        batch_size=4,
        resampled=False,
        num_workers=0,
        shuffle_buffer=1,
    )
    _trainer(tmp_path, max_steps=5, limit_val_batches=0).fit(model, data)
    # 20 good samples: a whole shard's 15 and its bad last one, then 5 of the next shard.
    assert model.trainer.callback_metrics["data/skipped"].item() == 1


def test_validation_logs_the_bad_samples_of_the_pass(tmp_path: Path, tiny_model_kwargs) -> None:
    write_shards(tmp_path, (3, 5), image_size=32, bad={0: CORRUPT_IMAGE, 1: NO_CAPTION})
    model = VLJEPA(**tiny_model_kwargs)
    data = WebDataModule(
        model.batch_collator(), val_shards=str(tmp_path), val_batch_size=1, num_workers=0
    )
    metrics = _trainer(tmp_path).validate(model, data)[0]
    assert metrics["val/skipped"] == 2
    assert math.isfinite(metrics["val/loss"]) and 0 <= metrics["val/recall_mean"] <= 1


def test_workers_start_without_fork_by_default(tmp_path: Path) -> None:
    write_shards(tmp_path, (4,))
    data = WebDataModule(PairCollator(ImageCodec(16)), val_shards=str(tmp_path), batch_size=2)
    _attach(data)
    loader = data.val_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert loader.timeout == 1800.0
    assert [len(batch) for batch in loader] == [2, 2]
    with pytest.raises(ValueError, match=r"data\.multiprocessing_context: 'threads' is not"):
        WebDataModule(multiprocessing_context="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"data\.worker_timeout must be >= 0"):
        WebDataModule(worker_timeout=-1)


def test_converted_folder_trains(tmp_path: Path, tiny_model_kwargs) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(12):
        Image.new("RGB", (40, 36), (20 * number, 0, 0)).save(photos / f"p{number}.jpg")
        (photos / f"p{number}.txt").write_text(f"a red photo number {number}")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "broken.txt").write_text("broken")
    output = tmp_path / "shards"
    report = convert_folder(str(photos), output=str(output), samples_per_shard=4, progress=False)
    assert report.written == 12 and report.skipped == 1
    model = VLJEPA(**tiny_model_kwargs)
    data = WebDataModule(
        model.batch_collator(),
        train_shards=str(output),
        val_shards=str(output),
        batch_size=4,
        num_workers=0,
    )
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, data)
    assert trainer.global_step == 3
    assert trainer.callback_metrics["data/skipped"].item() == 0


def test_shapes_loaders_know_their_length(shapes_root: Path, tiny_model_kwargs) -> None:
    data = tiny_shapes_data(shapes_root, VLJEPA(**tiny_model_kwargs))
    _attach(data, world_size=2)
    assert len(data.train_dataloader()) == 256 // (16 * 2)
    assert len(data.val_dataloader()) == 2  # 32 samples per rank


@dataclass(frozen=True)
class StuckImageCodec(ImageCodec):
    """A codec whose worker never delivers (as a worker stuck reading a shard)."""

    def decode(self, data: bytes) -> Tensor:
        time.sleep(120)
        return super().decode(data)


# With the forkserver the batches are received in a thread, which hands the timeout on.
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_stuck_worker_ends_the_pass_naming_the_rank(
    tmp_path: Path, tiny_model_kwargs, method: str
) -> None:
    write_shards(tmp_path, (4,), image_size=32)
    model = VLJEPA(**tiny_model_kwargs)
    collator = replace(model.batch_collator(), x=StuckImageCodec(32))
    data = WebDataModule(
        collator,
        val_shards=str(tmp_path),
        batch_size=2,
        num_workers=1,
        multiprocessing_context=method,  # type: ignore[arg-type]
        worker_timeout=2,
    )
    with pytest.raises(
        RuntimeError,
        match=r"rank 0 of 1 waited longer than data\.worker_timeout for a batch from its data "
        r"loader workers during validate \(epoch 0, global step 0\)",
    ):
        _trainer(tmp_path).validate(model, data)


# Stands for any lock a library takes in a worker (the stderr buffer's when a skipped sample is
# logged, an allocator's...) while a thread of the parent process holds it.
_LIBRARY_LOCK = threading.Lock()


@dataclass(frozen=True)
class LockingImageCodec(ImageCodec):
    """A codec that takes a library lock while it decodes."""

    def decode(self, data: bytes) -> Tensor:
        with _LIBRARY_LOCK:
            return super().decode(data)


@pytest.mark.slow
def test_workers_not_forked_ignore_locks_held_by_the_parents_threads(tmp_path: Path) -> None:
    """A forked worker inherits a lock held by another thread and never delivers; a worker
    started by the forkserver (the default) imports its modules afresh and does; the forked
    one ends the pass after worker_timeout instead of hanging."""
    write_shards(tmp_path, (4,))
    release = threading.Event()

    def hold_the_lock() -> None:
        with _LIBRARY_LOCK:
            release.wait()

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    try:
        for method, timeout in (("forkserver", 1800.0), ("fork", 5.0)):
            data = WebDataModule(
                PairCollator(LockingImageCodec(16)),
                val_shards=str(tmp_path),
                batch_size=2,
                num_workers=1,
                multiprocessing_context=method,  # type: ignore[arg-type]
                worker_timeout=timeout,  # the forkserver's first start may take a while
            )
            _attach(data)
            if method == "forkserver":
                assert [len(batch) for batch in data.val_dataloader()] == [2, 2]
                continue
            with pytest.raises(RuntimeError, match="DataLoader timed out after 5.0 seconds"):
                list(data.val_dataloader())
    finally:
        release.set()
        holder.join()


MAIN_SCRIPT = """
import os, sys
import marked  # a module of the script's own, as a training script imports its helpers
from jepa_lightning.data import PairCollator, WebDataModule
from jepa_lightning.encoders.vision import ImageCodec

if __name__ == "__main__":
    data = WebDataModule(PairCollator(ImageCodec(16)), val_shards=sys.argv[1], batch_size=2,
                         num_workers=1)
    for _ in range(3):  # a worker started for each pass
        assert [len(batch) for batch in data.val_dataloader()] == [2, 2]
"""


@pytest.mark.slow
def test_workers_find_the_main_scripts_imports_preloaded(tmp_path: Path) -> None:
    """The forkserver of Python releases before late 2025 never preloads ``__main__``, and
    every worker runs the main script again: its imports must come preloaded, or each worker
    imports them anew (for the jepa-lightning script, the whole CLI)."""
    write_shards(tmp_path / "shards", (4,))
    imports = tmp_path / "imports.txt"
    (tmp_path / "marked.py").write_text(
        f"import os\nwith open({str(imports)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
    )
    (tmp_path / "train.py").write_text(MAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "train.py"), str(tmp_path / "shards")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Imported by the script and once by the forkserver: not again by the three workers.
    assert len(imports.read_text().split()) == 2


@pytest.mark.parametrize("per_node", [True, False])
def test_prepare_data_on_another_node_than_the_first(
    per_node: bool, tiny_model_kwargs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process plays local rank 0 of node 1: it writes the generated shards only when
    # each node writes its own (node-local disks), not when global rank 0 writes for all.
    monkeypatch.setattr(Trainer, "node_rank", property(lambda self: 1))
    model = VLJEPA(**tiny_model_kwargs)
    data = tiny_shapes_data(tmp_path / "shapes", model, prepare_data_per_node=per_node)
    trainer = Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    if per_node:
        trainer.fit(model, data)
        assert trainer.global_step == 1
    else:
        with pytest.raises(FileNotFoundError):
            trainer.fit(model, data)
        assert not (tmp_path / "shapes" / "train").exists()

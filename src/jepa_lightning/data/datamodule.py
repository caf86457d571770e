"""LightningDataModules that stream WebDataset shards."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import ModuleType
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.features import (
    DTYPES,
    check_feature_cache,
    encoder_fingerprint,
    feature_cache_of,
    feature_codec,
)
from jepa_lightning.data.pipeline import (
    Shard,
    ShardSource,
    ShardStream,
    collated,
    count_samples,
    resolve_shards,
)
from jepa_lightning.data.receiver import BackgroundReceiver, receives_in_background
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.timeouts import explain_timeout
from jepa_lightning.tools.feature_cache import ensure_feature_cache
from jepa_lightning.tools.shapes import ShapesSpec, ensure_shapes_shards

log = logging.getLogger(__name__)

# Every rank's loader yields exactly len() batches whatever the workers (see pipeline).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

StartMethod = Literal["forkserver", "spawn", "fork"]


def worker_start_method(method: StartMethod | None) -> StartMethod:
    """The start method of loader workers: ``forkserver`` where the platform has it.

    ``fork`` copies the parent process, locks included: forked from a process that already
    runs threads (the progress bar's, the logger's, the process group's), a worker can
    deadlock before its first batch and leave its rank, and so every rank, waiting forever.
    ``forkserver`` forks workers from a single-threaded server process started once per
    rank; ``spawn`` starts each worker as a fresh interpreter (slower to start).

    Args:
        method: The configured method, or None for the default.

    Returns:
        The method.

    Raises:
        ValueError: If the platform does not offer ``method``.
    """
    available = multiprocessing.get_all_start_methods()
    if method is None:
        return "forkserver" if "forkserver" in available else "spawn"
    if method not in available:
        raise ValueError(
            f"data.multiprocessing_context: {method!r} is not available here; choose one of "
            f"{', '.join(available)}"
        )
    return method


def _modules_of_main_script() -> set[str]:
    """The imported modules that a script run as ``__main__`` names at its top level.

    A worker started by ``forkserver`` (or ``spawn``) runs the parent's main *script* again
    before its first sample (the ``if __name__ == "__main__"`` idiom), and the forkserver
    never preloads ``__main__`` whatever its preload list says (CPython gh-126631 and
    gh-137996, fixed in the 3.13 and 3.14 branches in September 2025). For the
    ``jepa-lightning`` console script that rerun imports the whole CLI (Lightning,
    jsonargparse, transformers): about a second per worker, per epoch and per validation
    pass. With these modules preloaded the rerun finds them imported. Modules found only
    through the script's own folder stay out (older forkservers ignore the parent's
    ``sys.path``, gh-117378). A main *module* (``python -m``) is not run again.

    Returns:
        Names of modules (already imported in this process) that ``__main__``'s globals hold
        or came from; empty when ``__main__`` is a module or has no file.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return set()
    if getattr(main, "__file__", None) is None:  # an interactive session
        return set()
    names = set()
    for value in vars(main).values():
        name = (
            value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        )
        if isinstance(name, str) and name != "__main__" and name in sys.modules:
            names.add(name)
    return names


def _preload_in_forkserver(stream: ShardStream) -> None:
    """Imports what a worker needs once, in the forkserver, rather than in every worker.

    That is the stream's and codecs' modules, and what the main script imports (see
    :func:`_modules_of_main_script`). Only takes effect before the rank's forkserver starts
    (its first loader).
    """
    codecs = [stream.collator.x, stream.collator.text]
    modules = {type(stream).__module__, *(type(c).__module__ for c in codecs if c is not None)}
    modules |= _modules_of_main_script()
    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", *sorted(modules)])


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardStream` the epoch before each pass.

    The stream yields collated batches, passed on as they are (``default_convert`` would
    walk every caption, key and metadata entry of every batch). Batches from workers started
    by the forkserver or spawn are received in a background thread (see
    :mod:`jepa_lightning.data.receiver`).

    Args:
        dataset: The stream.
        epoch_of: Returns the current epoch (the trainer's).
        resume_batches_of: Returns how many batches of the epoch were already trained on
            (non-zero when a run resumes mid-epoch): they are replayed and dropped. None for
            evaluation loaders.
        **kwargs: ``DataLoader`` arguments.
    """

    def __init__(
        self,
        dataset: ShardStream,
        epoch_of: Callable[[], int],
        resume_batches_of: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        # Before DataLoader.__init__, which sets _iterator (the property below uses them).
        self._workers_iterator: _BaseDataLoaderIter | None = None
        self._receiver: weakref.ref[BackgroundReceiver[Any]] | None = None
        super().__init__(dataset, batch_size=None, collate_fn=collated, **kwargs)
        self.epoch_of = epoch_of
        self.resume_batches_of = resume_batches_of

    # torch keeps the iterator of persistent workers in _iterator and reuses it for every
    # pass. Whoever reads or replaces it is about to use it (torch's __iter__ resets it,
    # Lightning's teardown shuts its workers down), so the thread that may still receive
    # from it for an abandoned pass stops first.
    @property
    def _iterator(self) -> _BaseDataLoaderIter | None:
        self._stop_receiving()
        return self._workers_iterator

    @_iterator.setter
    def _iterator(self, iterator: _BaseDataLoaderIter | None) -> None:
        self._stop_receiving()
        self._workers_iterator = iterator

    def _stop_receiving(self) -> None:
        """Closes the receiver of the persistent workers' last pass, if it is still open."""
        receiver = self._receiver() if self._receiver is not None else None
        self._receiver = None
        if receiver is not None:
            receiver.close(timeout=None)  # its thread must be done with the iterator

    def __iter__(self) -> Any:
        self.dataset.set_epoch(self.epoch_of())  # type: ignore[attr-defined]
        # The stream is seeded by the epoch, so replaying it and dropping the batches already
        # trained on resumes a run exactly where it stopped.
        done = self.resume_batches_of() % len(self) if self.resume_batches_of is not None else 0
        batches: Iterator[Any] = super().__iter__()
        if receives_in_background(self, batches):
            receiver = BackgroundReceiver(batches, shutdown=not self.persistent_workers)
            if self.persistent_workers:
                # Weak: a receiver nobody iterates any more is closed when dropped.
                self._receiver = weakref.ref(receiver)
            batches = receiver
        try:
            for _ in range(done):
                next(batches)
        except BaseException:
            # The error's traceback holds this frame: close the thread now, not with the error.
            if isinstance(batches, BackgroundReceiver):
                batches.close()
            raise
        return batches


def _x_encoder_to_cache(
    module: LightningModule, collator: PairCollator, fingerprint_hash: str
) -> ModalityEncoder:
    """The model's X-encoder: the encoder of ``module`` with the collator's fingerprint."""
    if getattr(collator.x, "for_training", None) is not None:
        raise ValueError(
            "data.feature_cache: the X-encoder's training inputs are random (a clip start "
            "per epoch), so a cache would fix one of them; train on the shards, or cache "
            "centre clips on purpose with `jepa-lightning data cache`"
        )
    for encoder in module.modules():
        if (
            isinstance(encoder, ModalityEncoder)
            and encoder_fingerprint(encoder)["hash"] == fingerprint_hash
        ):
            return encoder
    raise ValueError(
        "data.feature_cache: none of the model's encoders is the X-encoder that "
        "data.collator names (pass this model's batch_collator())"
    )


class WebDataModule(LightningDataModule):
    """Streams (image, caption[, json]) samples, or cached X-encoder tokens, from WebDataset shards.

    The model being trained supplies the collator (its encoders' codecs: image size,
    tokenizer; and its X-encoder's fingerprint) through its ``batch_collator()``: the
    ``jepa-lightning`` CLI links it, Python code passes it as ``collator``. Every rank yields
    the same number of batches, in training and in evaluation, whatever the shard sizes (see
    :mod:`jepa_lightning.data.pipeline`); ``len()`` of each loader is that number.

    Training modes (``resampled``):

    * ``True`` (default): shards are drawn with replacement, per rank and worker; an epoch is
      ``samples_per_epoch`` samples (default: the indexes' total). For corpora too large for
      epochs, and the only mode that mixes sources by ``train_weights``.
    * ``False``: every epoch reads each sample once, in a shard order shuffled per epoch
      (with ``index.json`` sizes; without them, whole shards are dealt to ranks and workers,
      which then needs ``samples_per_epoch`` and at least ranks x workers shards).

    Feature shards written by ``jepa-lightning data cache`` are recognised by their
    ``index.json``; their encoder fingerprint must match the model's X-encoder. With
    ``feature_cache`` the data module writes that cache of the training shards itself, in
    ``prepare_data`` (once; again when the encoder or the shards change), and trains on it.

    Args:
        collator: Decodes and batches samples: the model's ``batch_collator()``.
        train_shards: Training shard source: a folder (with ``index.json`` or ``*.tar``), a
            brace pattern, a ``pipe:`` command, or a list of these.
        val_shards: Validation shard source, read in order, split evenly over ranks.
        train_weights: With a list of training sources, the fraction of training samples
            drawn from each (normalised; needs ``resampled``). Fractions of samples when
            the sources have ``index.json`` sizes, else fractions of shard draws.
        batch_size: Samples per batch on each rank.
        val_batch_size: Largest validation batch; default ``batch_size``.
        samples_per_epoch: Training samples per epoch over all ranks; default the training
            indexes' total (required when a source has no index).
        resampled: Draw training shards with replacement (see above).
        num_workers: Data loader workers per rank.
        shuffle_buffer: Sample shuffle buffer size (training).
        seed: Base seed of shard and sample shuffling; the epoch is mixed in.
        pin_memory: Pin batches in page-locked memory (GPU training).
        persistent_workers: Keep workers alive between epochs.
        multiprocessing_context: How loader workers start: ``"forkserver"`` (default where
            available, else ``"spawn"``), ``"spawn"`` or ``"fork"``. ``fork`` starts fastest
            but can deadlock a worker forked while the process runs threads (as a DDP rank
            does), which stops every rank. With ``forkserver`` and ``spawn`` a script that
            builds loaders must guard its entry point (``if __name__ == "__main__":``).
        worker_timeout: Seconds a rank waits for a batch from its workers before it fails,
            naming itself (0 waits forever). Like the DDP strategy's ``timeout`` for
            collectives, it ends a run whose rank is stuck instead of leaving it hanging.
        feature_cache: A folder for the frozen X-encoder's tokens of the training shards:
            computed once, on the training device, and read in every epoch instead of the
            images (validation still reads the images). Needs a frozen X-encoder whose inputs
            are the same every epoch (not random training clips).
        feature_cache_dtype: Storage dtype of ``feature_cache``: ``float16``, ``bfloat16``
            (for tokens beyond float16's range) or ``float32`` (exact tokens).
        prepare_data_per_node: Where ``prepare_data`` (the feature cache; the generated data
            sets' shards) writes: on each node's local rank 0 (for node-local disks), or, when
            False, on global rank 0 only (for a filesystem the nodes share, where two writers
            would write the same folder at once). Lightning's attribute of that name.
    """

    def __init__(
        self,
        collator: PairCollator | None = None,
        train_shards: ShardSource | None = None,
        val_shards: ShardSource | None = None,
        train_weights: list[float] | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        samples_per_epoch: int | None = None,
        resampled: bool = True,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        multiprocessing_context: StartMethod | None = None,
        worker_timeout: float = 1800.0,
        feature_cache: str | None = None,
        feature_cache_dtype: str = "float16",
        prepare_data_per_node: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if worker_timeout < 0:
            raise ValueError(f"data.worker_timeout must be >= 0, got {worker_timeout}")
        if train_weights is not None:
            if isinstance(train_shards, str) or len(train_weights) != len(train_shards or []):
                raise ValueError(
                    "data.train_weights needs data.train_shards to be a list of sources, "
                    "one weight each"
                )
            if any(w < 0 for w in train_weights) or sum(train_weights) <= 0:
                raise ValueError(f"data.train_weights must be >= 0, not all 0: {train_weights}")
            if not resampled:
                raise ValueError("data.train_weights needs data.resampled: true")
            if feature_cache is not None:
                raise ValueError(
                    "data.feature_cache caches one training source, not weighted sources "
                    "(data.train_weights): cache each with `jepa-lightning data cache`"
                )
        if feature_cache_dtype not in DTYPES:
            raise ValueError(
                f"data.feature_cache_dtype must be one of {', '.join(DTYPES)}, "
                f"got {feature_cache_dtype!r}"
            )
        self.collator = collator
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.train_weights = train_weights
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.samples_per_epoch = samples_per_epoch
        self.resampled = resampled
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.multiprocessing_context = worker_start_method(multiprocessing_context)
        self.worker_timeout = worker_timeout
        self.feature_cache = feature_cache
        self.feature_cache_dtype = feature_cache_dtype
        self.prepare_data_per_node = prepare_data_per_node
        self._val_shards: list[Shard] | None = None

    def prepare_data(self) -> None:
        """Writes ``feature_cache`` unless it holds the current X-encoder's training tokens.

        Only when fitting: validation, testing and prediction read the images.

        Raises:
            ValueError: If ``feature_cache`` is set without a trainer and the model's
                collator, the model's X-encoder is not frozen, or its training inputs are
                random (clip starts).
        """
        if self.feature_cache is None:
            return
        trainer = self.trainer
        if trainer is not None and trainer.state.fn != TrainerFn.FITTING:
            return  # validate, test and predict read no training data
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        collator = self.collator
        fingerprint = collator.x_fingerprint if collator is not None else None
        module = trainer.lightning_module if trainer is not None else None
        if trainer is None or module is None or collator is None or fingerprint is None:
            raise ValueError(
                "data.feature_cache is written from the model's X-encoder: run it through "
                "Trainer.fit, with the model's batch_collator() as data.collator (a model "
                "whose X-encoder trains, such as IJEPA, has no tokens to cache)"
            )
        ensure_feature_cache(
            self.train_shards,
            self.feature_cache,
            _x_encoder_to_cache(module, collator, fingerprint["hash"]),
            dtype=self.feature_cache_dtype,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=str(trainer.strategy.root_device),
            multiprocessing_context=self.multiprocessing_context,
            name="data.feature_cache",
        )

    def _collator(self, shards: list[Shard], name: str) -> PairCollator:
        """The model's collator; for feature shards, checked and reading cached tokens."""
        if self.collator is None:
            raise ValueError(
                "data.collator is not set: pass the model's batch_collator() (the "
                "jepa-lightning CLI links it from the model)"
            )
        record = feature_cache_of(shards, name)
        if record is None:
            return self.collator
        check_feature_cache(record, self.collator.x_fingerprint, name)
        return replace(self.collator, x=feature_codec(record))

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, stream: ShardStream, train: bool = False) -> EpochDataLoader:
        workers: dict[str, Any] = {}
        if self.num_workers > 0:
            if self.multiprocessing_context == "forkserver":
                _preload_in_forkserver(stream)
            workers = {
                "multiprocessing_context": self.multiprocessing_context,
                "timeout": self.worker_timeout,
                "persistent_workers": self.persistent_workers,
            }
        return EpochDataLoader(
            stream,
            epoch_of=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            resume_batches_of=self._batches_done_this_epoch if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **workers,
        )

    def on_exception(self, exception: BaseException) -> None:
        """Says which rank waited, where, and for what, when a wait timed out.

        A collective that another rank never reached (the DDP strategy's ``timeout``) and a
        loader whose workers sent nothing (``worker_timeout``) end the run with that error.
        """
        if self.trainer is None:
            return
        trainer = self.trainer
        stage = trainer.state.stage or trainer.state.fn
        during = (
            f"{stage.value if stage is not None else 'setup'} (epoch {trainer.current_epoch}, "
            f"global step {trainer.global_step})"
        )
        explain_timeout(exception, trainer.global_rank, trainer.world_size, during)

    def _batches_done_this_epoch(self) -> int:
        # Restored from the checkpoint when a run resumes; 0 at the start of an epoch.
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _train_shards(self) -> tuple[list[Shard], list[float] | None]:
        """The training shards and, with ``train_weights``, each shard's draw weight."""
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        if self.feature_cache is not None:
            # Written by prepare_data, which Trainer.fit calls first.
            return resolve_shards(self.feature_cache, "data.feature_cache"), None
        name = "data.train_shards"
        if self.train_weights is None:
            return resolve_shards(self.train_shards, name), None
        shards: list[Shard] = []
        weights: list[float] = []
        for position, (source, weight) in enumerate(
            zip(self.train_shards, self.train_weights, strict=True)
        ):
            part = resolve_shards(source, f"{name}[{position}]")
            sizes = [shard.num_samples for shard in part]
            # Uniform within a source; a source's shards share its weight, per sample when
            # the sizes are known, so that its share of samples is its weight.
            known = [size for size in sizes if size is not None]
            total = sum(known) if len(known) == len(sizes) else len(part)
            shards.extend(part)
            weights.extend([weight / max(total, 1)] * len(part))
        return shards, weights

    def train_dataloader(self) -> EpochDataLoader:
        """The training stream: equal batch counts on every rank."""
        shards, weights = self._train_shards()
        rank, world = self._rank_and_world()
        sizes = [shard.num_samples for shard in shards]
        sized = all(size is not None for size in sizes)
        samples = self.samples_per_epoch or (sum(int(s or 0) for s in sizes) if sized else None)
        if samples is None:
            raise ValueError(
                "data.samples_per_epoch is required when a data.train_shards source has no "
                "index.json (jepa-lightning data convert writes one)"
            )
        batches_per_rank = samples // (self.batch_size * world)
        if batches_per_rank < 1:
            raise ValueError(
                f"an epoch of {samples} samples is less than one batch of {self.batch_size} "
                f"on each of {world} ranks; lower data.batch_size or raise data.samples_per_epoch"
            )
        readers = world * max(1, self.num_workers)
        if not self.resampled and readers > len(shards):
            raise ValueError(
                f"data.train_shards has {len(shards)} shards, fewer than the {world} ranks x "
                f"{max(1, self.num_workers)} workers that read them without resampling; "
                "set data.resampled: true, lower data.num_workers, or write smaller shards"
            )
        stream = ShardStream(
            shards,
            self._collator(shards, "data.train_shards").for_training(),
            self.batch_size,
            mode="resampled" if self.resampled else "epoch",
            batches_per_rank=batches_per_rank,
            rank=rank,
            world_size=world,
            shard_weights=weights,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
        )
        return self._loader(stream, train=True)

    def _eval_loader(self, captions_required: bool = True) -> EpochDataLoader:
        if self.val_shards is None:
            raise ValueError("data.val_shards is not set")
        if self._val_shards is None:
            shards = resolve_shards(self.val_shards, "data.val_shards")
            if any(shard.num_samples is None for shard in shards):
                log.info(
                    "counting the samples of %d validation shards (no index.json)", len(shards)
                )
                shards = [
                    shard
                    if shard.num_samples is not None
                    else replace(shard, num_samples=count_samples(shard.url))
                    for shard in shards
                ]
            self._val_shards = shards
        rank, world = self._rank_and_world()
        collator = self._collator(self._val_shards, "data.val_shards")  # names the key itself
        collator = replace(collator, captions_required=captions_required)
        try:
            stream = ShardStream(
                self._val_shards,
                collator,
                self.val_batch_size,
                mode="eval",
                rank=rank,
                world_size=world,
            )
        except ValueError as error:
            raise ValueError(f"data.val_shards: {error}") from error
        return self._loader(stream)

    def val_dataloader(self) -> EpochDataLoader:
        """The validation shards, in order, the same number of batches on every rank."""
        return self._eval_loader()

    def test_dataloader(self) -> EpochDataLoader:
        """The validation shards (the held-out set), as :meth:`val_dataloader`."""
        return self._eval_loader()

    def predict_dataloader(self) -> EpochDataLoader:
        """The validation shards, as :meth:`val_dataloader`, samples without caption kept."""
        return self._eval_loader(captions_required=False)


class ShapesDataModule(WebDataModule):
    """The embedded default data: generated "shapes" shards, written on first use.

    Images of coloured shapes with compositional captions ("a small red circle
    on the left"), written as WebDataset shards under ``root`` by
    :func:`~jepa_lightning.tools.shapes.ensure_shapes_shards` in
    ``prepare_data`` (once; rewritten only when the parameters change).

    Args:
        root: Folder for the ``train`` and ``val`` shard folders.
        train_samples: Number of training samples to generate.
        val_samples: Number of validation samples to generate.
        image_size: Side of the generated images.
        two_shape_fraction: Fraction of samples with two shapes and a relation.
        with_queries: Add a question as the query of each sample.
        data_seed: Seed of the generator (validation uses ``data_seed + 1``).
        **kwargs: :class:`WebDataModule` arguments (batch size, workers...).
    """

    def __init__(
        self,
        root: str = "data/shapes",
        train_samples: int = 20000,
        val_samples: int = 1000,
        image_size: int = 64,
        two_shape_fraction: float = 0.3,
        with_queries: bool = False,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs["train_shards"] = kwargs.get("train_shards") or f"{root}/train"
        kwargs["val_shards"] = kwargs.get("val_shards") or f"{root}/val"
        super().__init__(**kwargs)
        self.root = root
        self.spec = ShapesSpec(
            image_size=image_size, two_shape_fraction=two_shape_fraction, with_queries=with_queries
        )
        self.splits = {"train": (train_samples, data_seed), "val": (val_samples, data_seed + 1)}

    def prepare_data(self) -> None:
        """Writes the shapes shards if they are missing or were made differently."""
        for split, (num_samples, seed) in self.splits.items():
            ensure_shapes_shards(
                f"{self.root}/{split}",
                num_samples,
                self.spec,
                seed=seed,
                split=split,
                progress=True,
            )
        super().prepare_data()

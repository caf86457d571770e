"""A WordPiece tokenizer with its vocabulary trimmed to the pieces that a corpus uses.

A Y-encoder trained from scratch has an embedding row per vocabulary entry, and every row
costs every training step: the embedding's gradient is dense, and AdamW updates each row.
BERT's tokenizer has 30522 entries; a narrow caption corpus uses a few hundred of them (the
generated shapes captions use 22). Trimming keeps the base tokenizer's normalisation and
WordPiece rules, the special tokens, every piece that the corpus's texts produce and every
single-character piece (word-initial and ``##`` continuation), and drops the rest.

The corpus's texts then split into exactly the pieces that the base tokenizer gives them:
WordPiece takes the longest piece in the vocabulary at each position, and every piece it took
with the full vocabulary is kept, while any longer one was already absent. Other text still
tokenizes, into shorter pieces down to single characters, with ``[UNK]`` only for what the base
tokenizer has no character piece for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from jepa_lightning.assets import resolve_tokenizer
from jepa_lightning.data.pipeline import ShardSource, resolve_shards
from jepa_lightning.data.shard_reader import ErrorHandler, shard_samples
from jepa_lightning.encoders.text import decode_text

__all__ = ["TrimmedVocabulary", "tokenizer_from_shards", "trim_vocabulary"]

log = logging.getLogger(__name__)

DEFAULT_BASE = "jepa_lightning:bert-base-uncased"
"""The tokenizer trimmed by default: BERT's uncased WordPiece, shipped in the package."""

# The base's settings that a vocab.txt tokenizer folder carries besides its special tokens.
_SETTINGS = (
    "do_lower_case",
    "do_basic_tokenize",
    "never_split",
    "tokenize_chinese_chars",
    "strip_accents",
    "model_max_length",
)
_CHECKED_TEXTS = 10_000


def _check_same_pieces(
    base: PreTrainedTokenizerBase, trimmed: PreTrainedTokenizerBase, texts: list[str]
) -> None:
    """Raises if ``trimmed`` splits one of ``texts`` into other pieces than ``base``."""
    for text in texts:
        expected, got = base.tokenize(text), trimmed.tokenize(text)
        if got != expected:
            raise ValueError(
                f"the trimmed tokenizer splits {text!r} into {got}, the base into {expected}: "
                "the base has a setting that a vocab.txt tokenizer folder does not carry"
            )


@dataclass(frozen=True)
class TrimmedVocabulary:
    """What :func:`trim_vocabulary` wrote.

    Attributes:
        output: Absolute path of the tokenizer folder (``vocab.txt``,
            ``tokenizer_config.json``), loadable with ``AutoTokenizer.from_pretrained``.
        base_size: Entries in the base tokenizer's vocabulary.
        size: Entries in the trimmed vocabulary.
        corpus_pieces: Distinct pieces that the texts produce.
        num_texts: Texts read.
    """

    output: str
    base_size: int
    size: int
    corpus_pieces: int
    num_texts: int


def _wordpiece_model(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The WordPiece model of a fast tokenizer's backend, as the ``tokenizers`` JSON holds it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "WordPiece" or "vocab_file" not in tokenizer.vocab_files_names:
        raise ValueError(
            f"can only trim a WordPiece tokenizer with a vocab.txt (BERT-style), got "
            f"{type(tokenizer).__name__} ({model.get('type', 'no fast backend')})"
        )
    return model


def trim_vocabulary(
    texts: Iterable[str],
    output: str | os.PathLike[str],
    base: str = DEFAULT_BASE,
    overwrite: bool = False,
) -> TrimmedVocabulary:
    """Writes ``base`` with its vocabulary trimmed to what ``texts`` use, plus every character.

    The kept entries stay in the base's order (special tokens first for BERT), renumbered from
    0. Every text splits as with ``base`` (see the module's docstring); the written tokenizer is
    checked to do so on the first 10,000.

    Args:
        texts: The corpus (captions, queries): any iterable, read once.
        output: Folder to write; it must not exist, or be empty, unless ``overwrite``.
        base: The tokenizer to trim: ``jepa_lightning:<name>``, a hub name or a folder.
        overwrite: Replace an existing tokenizer folder.

    Returns:
        What was written.

    Raises:
        ValueError: If ``base`` is not a WordPiece tokenizer with a ``vocab.txt``, if
            ``texts`` is empty, or if the written tokenizer splits a text differently (a
            setting of ``base`` that a ``vocab.txt`` folder cannot carry).
        FileExistsError: If ``output`` holds files and ``overwrite`` is False.
    """
    folder = Path(output).absolute()
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace it")
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(base))
    model = _wordpiece_model(tokenizer)
    prefix = model.get("continuing_subword_prefix", "##")
    vocabulary = tokenizer.get_vocab()
    used: set[int] = set()
    num_texts = 0
    sample: list[str] = []  # texts that the written tokenizer must split as the base does
    stream = iter(texts)
    while chunk := list(islice(stream, 1024)):
        num_texts += len(chunk)
        sample += chunk[: _CHECKED_TEXTS - len(sample)]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            used.update(ids)
    if not num_texts:
        raise ValueError("trim_vocabulary got no texts")
    kept = used | {vocabulary[token] for token in tokenizer.all_special_tokens}
    kept |= {index for piece, index in vocabulary.items() if len(piece.removeprefix(prefix)) == 1}
    pieces = sorted(kept)
    by_index = {index: piece for piece, index in vocabulary.items()}
    settings = {
        key: tokenizer.init_kwargs[key] for key in _SETTINGS if key in tokenizer.init_kwargs
    }
    config = {
        **settings,
        **tokenizer.special_tokens_map,
        "tokenizer_class": type(tokenizer).__name__.removesuffix("Fast"),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (staging / "vocab.txt").write_text(
            "".join(by_index[index] + "\n" for index in pieces), encoding="utf-8"
        )
        (staging / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        _check_same_pieces(tokenizer, AutoTokenizer.from_pretrained(staging), sample)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TrimmedVocabulary(str(folder), len(vocabulary), len(pieces), len(used), num_texts)


class _ShardTexts:
    """The texts of a field of every sample of some shards, counting what cannot be read."""

    def __init__(self, shards: ShardSource, field: str) -> None:
        self.urls = [shard.url for shard in resolve_shards(shards, "shards")]
        self.field = field
        self.skipped = 0
        self.unreadable_shards: list[str] = []

    def _read_error(self, url: str) -> ErrorHandler:
        def handler(error: Exception) -> bool:
            log.warning("shard %s unreadable: %s", url, error)
            self.unreadable_shards.append(url)
            return True

        return handler

    def __iter__(self) -> Iterator[str]:
        for url in self.urls:
            for sample in shard_samples(url, self._read_error(url)):
                try:
                    yield decode_text(sample[self.field])
                except (KeyError, UnicodeDecodeError, ValueError) as error:
                    self.skipped += 1
                    reason = f"no {self.field!r} member" if isinstance(error, KeyError) else error
                    log.warning("skipping sample %s of %s: %s", sample["__key__"], url, reason)


def tokenizer_from_shards(
    shards: ShardSource,
    output: str,
    base: str = DEFAULT_BASE,
    field: str = "txt",
    overwrite: bool = False,
) -> str:
    """Writes ``base`` trimmed to the vocabulary of the shards' texts (``data tokenizer``).

    Name the output folder as a Y-encoder's ``tokenizer`` and leave out the text model's
    ``vocab_size``: it is the trimmed size. Samples without the text field, or with one that
    is empty or not UTF-8, are skipped and counted; an unreadable shard is reported and the
    samples read before the error are kept.

    Args:
        shards: The shards (folder, brace pattern, ``pipe:`` command, URL, or a list).
        output: Output folder of the tokenizer.
        base: The tokenizer to trim (``jepa_lightning:<name>``, a hub name or a folder).
        field: The sample member holding the text (``txt``: captions).
        overwrite: Replace an existing tokenizer folder.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: If a local shard does not exist.
        ValueError: If no sample has a readable text, or ``base`` cannot be trimmed.
    """
    texts = _ShardTexts(shards, field)
    try:
        trimmed = trim_vocabulary(texts, output, base=base, overwrite=overwrite)
    except ValueError as error:
        if texts.skipped or texts.unreadable_shards:
            raise ValueError(
                f"{error} ({texts.skipped} samples without a readable {field!r}, "
                f"{len(texts.unreadable_shards)} unreadable shards)"
            ) from error
        raise
    print(
        f"wrote {trimmed.output}: {trimmed.size} of {trimmed.base_size} pieces of {base} "
        f"({trimmed.corpus_pieces} used by {trimmed.num_texts} texts, the rest single "
        f"characters and special tokens); {texts.skipped} samples skipped, "
        f"{len(texts.unreadable_shards)} unreadable shards"
    )
    return trimmed.output

"""Files shipped inside the package: the tokenizers that the default configs name.

A config names a shipped tokenizer as ``jepa_lightning:<name>`` (e.g.
``jepa_lightning:bert-base-uncased``), which resolves to the package's own copy wherever the
command runs and wherever the package is installed, so that configs and the checkpoints that
record them do not depend on the working folder.

* ``bert-base-uncased``: BERT's uncased WordPiece tokenizer (30522 entries).
* ``bert-base-uncased-shapes``: the same, trimmed (:func:`jepa_lightning.tools.tokenizer.
  trim_vocabulary`) to every caption, question and answer of the shapes generator with all its
  colours, shapes, sizes, positions and relations (2040 entries: those words, every single
  character, the special tokens); ``tests/test_assets.py`` rebuilds it and compares.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_PREFIX = "jepa_lightning:"
"""Prefix of a packaged tokenizer's name."""

TOKENIZERS = Path(__file__).resolve().parent / "tokenizers"


def resolve_tokenizer(name: str) -> str:
    """The folder of a packaged tokenizer, or ``name`` itself (a hub name or a folder).

    Args:
        name: ``jepa_lightning:<name>``, a hub name or a folder.

    Returns:
        The packaged tokenizer's folder for a ``jepa_lightning:`` name, else ``name``.

    Raises:
        FileNotFoundError: If the package ships no tokenizer of that name.
    """
    if not name.startswith(PACKAGED_PREFIX):
        return name
    folder = TOKENIZERS / name.removeprefix(PACKAGED_PREFIX)
    if not folder.is_dir():
        shipped = sorted(path.name for path in TOKENIZERS.iterdir() if path.is_dir())
        raise FileNotFoundError(
            f"no packaged tokenizer {name!r}; the package ships "
            + ", ".join(PACKAGED_PREFIX + item for item in shipped)
        )
    return str(folder)

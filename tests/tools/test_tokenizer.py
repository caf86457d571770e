from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jepa_lightning.assets import resolve_tokenizer
from jepa_lightning.cli import main
from jepa_lightning.tools.tokenizer import DEFAULT_BASE, tokenizer_from_shards, trim_vocabulary

CORPUS = [
    "a small red circle on the left",
    "A green triangle to the left of a yellow square.",
    "Two dogs play frisbee in the park, 3 children watch",
    "an unbelievably photogenic hippopotamus",
]


@pytest.fixture(scope="module")
def base() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(resolve_tokenizer(DEFAULT_BASE))


def test_corpus_texts_split_into_the_base_pieces(base, tmp_path: Path) -> None:
    report = trim_vocabulary(iter(CORPUS), tmp_path / "tok")  # any iterable, read once
    trimmed = AutoTokenizer.from_pretrained(report.output)
    assert report.num_texts == len(CORPUS)
    assert report.base_size == len(base) and report.size == len(trimmed) < 2100
    for text in CORPUS:
        assert trimmed.tokenize(text) == base.tokenize(text)
        ids = trimmed(text)["input_ids"]
        assert trimmed.convert_ids_to_tokens(ids) == base.convert_ids_to_tokens(
            base(text)["input_ids"]
        )
    # Special tokens first, in BERT's order; [unused*] entries dropped.
    assert trimmed.convert_ids_to_tokens(list(range(5))) == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert trimmed.pad_token_id == 0
    assert not any(token.startswith("[unused") for token in trimmed.get_vocab())
    # Longer pieces: exactly those that the corpus uses.
    used = {piece for text in CORPUS for piece in base.tokenize(text)}
    longer = {t for t in trimmed.get_vocab() if len(t.removeprefix("##")) > 1 and t[0] != "["}
    assert longer == {piece for piece in used if len(piece.removeprefix("##")) > 1}
    assert report.corpus_pieces == len(used)


def test_other_text_still_tokenizes_down_to_characters(base, tmp_path: Path) -> None:
    trimmed = AutoTokenizer.from_pretrained(trim_vocabulary(CORPUS, tmp_path / "tok").output)
    text = "Zebra quartz, 42 café! 日本"
    pieces = trimmed.tokenize(text)
    assert "[UNK]" not in pieces and "[UNK]" not in base.tokenize(text)
    assert "".join(piece.removeprefix("##") for piece in pieces) == "zebraquartz,42cafe!日本"
    assert len(pieces) > len(base.tokenize(text))  # words outside the corpus: shorter pieces


def test_output_folder_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    output = tmp_path / "tok"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        trim_vocabulary(CORPUS, output)
    assert (output / "keep.txt").read_text() == "mine"
    trim_vocabulary(CORPUS, output, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name != "tok"]  # no staging folder left


def test_no_texts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no texts"):
        trim_vocabulary([], tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_a_base_that_is_not_wordpiece_is_refused(tmp_path: Path) -> None:
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "red": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]").save_pretrained(
        tmp_path / "base"
    )
    with pytest.raises(ValueError, match="only trim a WordPiece tokenizer.*WordLevel"):
        trim_vocabulary(CORPUS, tmp_path / "tok", base=str(tmp_path / "base"))


def _write_shard(path: Path, texts: list[bytes | None]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for number, text in enumerate(texts):
            sample = {"__key__": f"s{number:03d}", "json": json.dumps({}).encode()}
            if text is not None:
                sample["txt"] = text
            writer.write(sample)


def test_data_tokenizer_command_skips_and_counts_bad_samples(
    base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "a-0.tar", [b"a purple star", None, b"  ", b"\xff\xfe"])
    _write_shard(shards / "a-1.tar", [b"an orange cross", b"a black square at the top"])
    data = (shards / "a-1.tar").read_bytes()
    cut = data.index(b"s001.txt")
    (shards / "a-1.tar").write_bytes(data[: cut + 512 + 5])  # the second sample's text cut
    output = tmp_path / "tok"
    main(["data", "tokenizer", str(shards), str(output)])
    printed = capsys.readouterr().out
    assert "4 samples skipped, 1 unreadable shards" in printed  # the cut one too
    assert "used by 2 texts" in printed
    trimmed = AutoTokenizer.from_pretrained(output)
    vocabulary = trimmed.get_vocab()
    assert {"purple", "star", "orange", "cross"} <= set(vocabulary)
    assert "black" not in vocabulary  # only in the lost sample
    assert trimmed.tokenize("a purple star") == base.tokenize("a purple star")


def test_missing_shard_is_fatal_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing-0.tar"):
        tokenizer_from_shards(str(tmp_path / "missing-0.tar"), str(tmp_path / "tok"))
    assert not (tmp_path / "tok").exists()


def test_shards_without_any_text_name_the_field(tmp_path: Path) -> None:
    _write_shard(tmp_path / "a-0.tar", [None, None])
    with pytest.raises(ValueError, match="no texts.*2 samples without a readable 'txt'"):
        tokenizer_from_shards(str(tmp_path / "a-0.tar"), str(tmp_path / "tok"))

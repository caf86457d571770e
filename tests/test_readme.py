"""The README's code: every Python snippet runs as written, every YAML snippet parses."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, TINY_BERT, TINY_LLAMA, TOKENIZER

README = (REPO / "README.md").read_text(encoding="utf-8")
PYTHON = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
YAML = re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)


def test_the_readme_has_snippets() -> None:
    assert PYTHON and YAML


@pytest.mark.parametrize("snippet", YAML)
def test_yaml_snippet_parses(snippet: str) -> None:
    assert isinstance(yaml.safe_load(snippet), dict)


@pytest.mark.parametrize("snippet", PYTHON)
def test_python_snippet_runs(snippet: str, tmp_path) -> None:
    from jepa_lightning.encoders import TextEncoder, VisionEncoder
    from jepa_lightning.export import export_model
    from jepa_lightning.models import VLJEPAModel

    # What the snippets read: an export of a small model at the default 64-pixel images.
    vit = {
        "model_type": "vit",
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    model = VLJEPAModel(
        VisionEncoder(vit), TextEncoder(TINY_BERT, tokenizer=TOKENIZER), 16, TINY_LLAMA
    )
    export_model(model, str(tmp_path / "exported" / "vl-jepa"))
    run = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]

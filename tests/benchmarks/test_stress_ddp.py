"""The DDP stress harness runs: one short 2-rank fit, counted as finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_fit_finishes_and_is_counted(tmp_path: Path) -> None:
    out = tmp_path / "stress.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "stress_ddp.py"), "--smoke"]
    subprocess.run([*command, "--out", str(out)], cwd=REPO, env=env, check=True, timeout=900)
    result = json.loads(out.read_text())
    assert result["fits"] == 1 and result["counts"] == {"ok": 1, "hung": 0, "failed": 0}
    assert result["records"][0]["steps"] == 6  # the fit ran to max_steps on rank 0
    assert result["packages"] == [str(REPO / "src" / "jepa_lightning" / "__init__.py")]

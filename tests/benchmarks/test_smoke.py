"""Every benchmark runs: its --smoke mode, in a subprocess, writes a complete result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
# End-to-end runs (a CLI fit, paper-shaped cases in several processes): slower than the rest.
SLOW = {"bench_learning.py", "gpu_check.py"}


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-4000:]}"
    return done


def smoke(script: str, out: Path) -> dict:
    run(str(BENCHMARKS / script), "--smoke", "--out", str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s
        for s in [*SCRIPTS, "gpu_check.py"]
    ],
)
def test_smoke_mode_writes_a_complete_result(script: str, tmp_path: Path) -> None:
    result = smoke(script, tmp_path / "result.json")
    assert result["smoke"] is True
    assert result["date"] and result["title"]
    machine = result["machine"]
    assert machine["cpu"]["model"] and machine["torch_threads"] >= 1
    assert machine["versions"]["torch"] and machine["versions"]["lightning"]
    assert result["headline"], "a benchmark states the figures its goals are about"
    for headline in result["headline"]:
        assert headline["metric"] and math.isfinite(headline["value"])
    header, rows = result["table"]["header"], result["table"]["rows"]
    assert rows and all(len(row) == len(header) for row in rows)


def test_run_all_runs_every_benchmark() -> None:
    text = (BENCHMARKS / "run_all.sh").read_text()
    assert [s for s in SCRIPTS if f"run {s}" not in text] == []
    subprocess.run(["bash", "-n", str(BENCHMARKS / "run_all.sh")], check=True)
    subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], check=True)


def test_results_table_renders_the_results(tmp_path: Path) -> None:
    result = smoke("bench_info_nce.py", tmp_path / "info_nce.json")
    page = tmp_path / "RESULTS.md"
    run(str(BENCHMARKS / "results_table.py"), "--results", str(tmp_path), "--out", str(page))
    assert "info_nce" not in page.read_text()  # smoke runs are not results
    args = ["--results", str(tmp_path), "--out", str(page), "--include-smoke"]
    run(str(BENCHMARKS / "results_table.py"), *args)
    text = page.read_text()
    assert result["headline"][0]["metric"] in text
    assert "| " + " | ".join(result["table"]["header"]) + " |" in text
    assert result["machine"]["cpu"]["model"] in text
    assert "Recorded runs" not in text  # no results/runs/ here


def test_results_table_lists_the_recorded_runs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    record = {
        "benchmark": "a_run",
        "date": "2026-11-29",
        "machine": "a machine",
        "commit": "abc1234",
        "headline": [{"metric": "R@1 at step 900", "value": 0.982}],
    }
    (tmp_path / "runs" / "a_run.json").write_text(json.dumps(record))
    (tmp_path / "runs" / "no_headline.json").write_text(json.dumps({"benchmark": "unlisted_run"}))
    page = tmp_path / "RESULTS.md"
    run(str(BENCHMARKS / "results_table.py"), "--results", str(tmp_path), "--out", str(page))
    text = page.read_text()
    assert "| a_run | R@1 at step 900 | 0.982 | a machine | 2026-11-29 | abc1234 |" in text
    assert "unlisted_run" not in text

import os
import subprocess
import sys

import pytest

import jepa_lightning.trainer
from jepa_lightning import allocator
from jepa_lightning.allocator import MMAP_THRESHOLD, keep_freed_memory
from jepa_lightning.trainer import Trainer

GLIBC = allocator._glibc() is not None
# The environment variables through which a user sets glibc's malloc thresholds.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")

# A step's pattern in a fresh interpreter: 128 MiB of blocks allocated, touched and freed,
# twice. Prints the MiB the process kept after the first round and the page faults of the
# second. (glibc's adaptive rule settles after a few rounds of so regular a pattern, unlike
# in a training step, whose blocks vary in size; the second round shows the difference.)
STEPS = """
import resource, sys, torch
from jepa_lightning.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 >> 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    blocks = [torch.ones(1 << 18) for _ in range(128)]  # 1 MiB each
    del blocks
before = rss_mib()
step()
kept = rss_mib() - before
before = faults()
step()
print(kept, faults() - before)
"""


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def libc(monkeypatch) -> FakeLibc:
    """A recording stand-in for glibc, with none of glibc's settings in the environment."""
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return fake


def run_steps(mode: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    kept, faults = done.stdout.split()
    return int(kept), int(faults)


@pytest.mark.skipif(not GLIBC or not os.path.exists("/proc/self/statm"), reason="glibc, Linux")
def test_the_next_step_reuses_the_memory_a_step_freed() -> None:
    kept_default, faults_default = run_steps("default")
    kept, faults = run_steps("keep")
    # glibc's defaults hand the freed blocks back, and the next step pages them in again
    # (32768 faults: one per 4 KiB page). Kept, the memory is not paged in again; the few
    # thousand faults left vary from run to run.
    assert kept_default < 32
    assert kept >= 96
    assert faults * 4 < faults_default


def test_sets_both_thresholds_mmap_first(libc: FakeLibc) -> None:
    assert keep_freed_memory(mmap_threshold=1 << 20, trim_threshold=1 << 30)
    assert libc.calls == [
        (allocator._M_MMAP_THRESHOLD, 1 << 20),
        (allocator._M_TRIM_THRESHOLD, 1 << 30),
    ]
    # <malloc.h>: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
    assert (allocator._M_TRIM_THRESHOLD, allocator._M_MMAP_THRESHOLD) == (-1, -3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
        ("GLIBC_TUNABLES", "glibc.rtld.nns=2:glibc.malloc.mmap_threshold=131072"),
    ],
)
def test_keeps_the_users_setting(libc: FakeLibc, monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert not keep_freed_memory()
    assert libc.calls == []


def test_other_tunables_do_not_count_as_a_setting(libc: FakeLibc, monkeypatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert keep_freed_memory()
    assert len(libc.calls) == 2


def test_does_nothing_without_glibc(monkeypatch) -> None:
    def no_glibc(name: str) -> str:
        raise ValueError(f"unrecognized configuration name: {name}")

    monkeypatch.setattr(os, "confstr", no_glibc)
    assert allocator._glibc() is None
    assert not keep_freed_memory()


@pytest.mark.parametrize(
    ("mmap_threshold", "trim_threshold", "message"),
    [
        (0, 1, "mmap_threshold must be in"),
        (MMAP_THRESHOLD + 1, 1, "mmap_threshold must be in"),
        (1 << 20, -1, "trim_threshold must be >= 0"),
    ],
)
def test_rejects_thresholds_glibc_would_refuse(
    libc: FakeLibc, mmap_threshold: int, trim_threshold: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        keep_freed_memory(mmap_threshold, trim_threshold)
    assert libc.calls == []


def test_the_trainer_sets_it_up(monkeypatch, tmp_path) -> None:
    calls: list[None] = []
    monkeypatch.setattr(jepa_lightning.trainer, "keep_freed_memory", lambda: calls.append(None))
    Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert len(calls) == 1

"""The errors of a timed-out wait name the rank, where it waited and what to set."""

from __future__ import annotations

import re

from jepa_lightning.timeouts import explain_timeout

DURING = "validate (epoch 0, global step 3)"


def test_loader_timeout_names_the_rank_and_the_setting() -> None:
    error = RuntimeError("DataLoader timed out after 5 seconds")
    assert explain_timeout(error, 1, 2, DURING)
    first, original = str(error).split("\n")
    assert first.startswith(
        "rank 1 of 2 waited longer than data.worker_timeout for a batch from its data loader "
        f"workers during {DURING}"
    )
    assert original == "DataLoader timed out after 5 seconds"


def _gloo_wait() -> None:
    raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms")


def test_collective_timeout_names_the_rank_and_the_call() -> None:
    try:
        _gloo_wait()
    except RuntimeError as raised:
        error = raised
    assert explain_timeout(error, 0, 4, DURING)
    assert re.match(
        r"rank 0 of 4 waited longer than the process group's timeout in a collective in "
        r"\S*tests/test_timeouts.py:\d+ _gloo_wait, called from \S*tests/test_timeouts.py:\d+ "
        rf"test_collective_timeout_names_the_rank_and_the_call during {re.escape(DURING)}: "
        "another rank never reached this collective",
        str(error),
    )
    assert "trainer.strategy.init_args.timeout" in str(error)


def test_other_errors_are_left_alone() -> None:
    for error in (RuntimeError("CUDA out of memory"), ValueError("Timed out waiting")):
        assert not explain_timeout(error, 0, 2, DURING)
        assert str(error) in ("CUDA out of memory", "Timed out waiting")

"""glibc allocator tuning for CPU runs: freed tensor memory is reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from megadepth.parallel.host_memory import keep_freed_memory
    tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
    def step():
        # a training step in miniature: several activation-sized buffers alive at once, then all freed
        xs = [torch.ones(2**20) for _ in range(12)]   # 12 x 4 MiB
        return sum(float(x[-1]) for x in xs)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
""")


def probe(mode: str, **env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=full_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_buffers_are_reused_not_faulted_in_again() -> None:
    """Tuned, ten steps fault in less than two steps' worth of pages. Untuned glibc (the reference here)
    returns the freed buffers to the OS and faults all of them in again each step on most runs; on some
    (depending on where the heap lands) it keeps them too, so only the tuned side is held to a bound."""
    pages = 48 * 2**20 // 4096  # one step's buffers
    tuned = probe("tune")
    assert tuned["tuned"] is True
    assert tuned["faults"] < 2 * pages, tuned
    assert probe("plain")["faults"] >= tuned["faults"]


def test_can_be_turned_off_and_user_settings_win() -> None:
    assert probe("tune", MEGADEPTH_MALLOC_TUNING="0")["tuned"] is False
    assert probe("tune", MALLOC_TRIM_THRESHOLD_="1000000")["tuned"] is False

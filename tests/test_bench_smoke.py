"""The benchmarks in bench/ still run: each one in its tiny --quick mode (seconds).

Not a performance test: quick runs are too small for their figures to mean anything, so only
what must hold at any size is asserted (every target measured, the storm's counts exact, the
backlog delivered exactly once, latency mails all arriving).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# benchmark -> targets that must pass even in a quick run (correctness, not speed)
MUST_PASS = {
    "startup": (),
    "latency": (),
    "backlog": ("nothing delivered twice",),
    "storm": ("counts in the mails",),
    "scan": (),
    "idle": (),
}


@pytest.mark.parametrize("name", sorted(MUST_PASS))
def test_benchmark_runs_in_quick_mode(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFIER_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=str(BENCH),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["name"] == name and result["quick"] is True
    assert result["targets"], "a benchmark must report at least one target"
    for target in result["targets"]:
        assert target["measured"] and target["target"], target
        if any(words in target["what"] for words in MUST_PASS[name]):
            assert target["pass"], target
    assert "nproc" in result["figures"]["machine"]
    # What it printed is what it saved: the summary a person reads names every target.
    for target in result["targets"]:
        assert target["what"] in proc.stdout


def test_run_script_lists_every_benchmark() -> None:
    """bench/run runs what is there: no script left out, none named that does not exist."""
    sys.path.insert(0, str(BENCH))
    try:
        import _run
    finally:
        sys.path.remove(str(BENCH))
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    assert set(_run.BENCHMARKS) == scripts == set(MUST_PASS)
    assert os.access(BENCH / "run", os.X_OK)

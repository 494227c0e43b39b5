"""bench/run: every benchmark in turn, a summary, and the table in bench/README.md rewritten.

Each benchmark runs as its own process (`python bench/NAME.py --json FILE`), so one that
fails or hangs is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

BENCHMARKS = ("startup", "latency", "backlog", "storm", "scan", "idle")
TIMEOUT = 240  # seconds one benchmark may take before it is called hung
BEGIN, END = "<!-- bench/run: begin -->", "<!-- bench/run: end -->"


VERDICT = {True: "pass", False: "**MISS**", None: "-"}


def run_one(name: str, quick: bool, out: Path) -> tuple[dict | None, float, str]:
    """The figures of one benchmark, its wall time, and its output."""
    argv = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
    if quick:
        argv.append("--quick")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        text = proc.stdout + proc.stderr
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        text, ok = f"hung: no result within {TIMEOUT}s\n{exc.stdout or ''}", False
    took = time.perf_counter() - t0
    if not ok or not out.exists():
        return None, took, text
    return json.loads(out.read_text()), took, text


def table(results: dict[str, dict | None]) -> list[str]:
    rows = [
        "| benchmark | target | measured (median) | baseline (same run) | ratio | pass |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        if res is None:
            rows.append(f"| {name} | | failed to run | | | FAIL |")
            continue
        for t in res["targets"]:
            rows.append(
                f"| {t['what']} | {t['target']} | {t['measured']} | {t['baseline']} | "
                f"{t['ratio']} | {VERDICT[t['pass']]} |"
            )
    return rows


def machine_line() -> str:
    m = machine()
    return (
        f"Machine: `nproc` {m['nproc']}, {m['cpu']}, {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}, {m['date']}."
    )


def update_readme(lines: list[str]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main() -> int:
    p = argparse.ArgumentParser(description="Run every benchmark and print a summary.")
    p.add_argument("--quick", action="store_true", help="tiny runs, seconds each (nothing saved)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    p.add_argument(
        "only",
        nargs="*",
        choices=[[], *BENCHMARKS],
        metavar="NAME",
        help=f"only these ({', '.join(BENCHMARKS)})",
    )
    args = p.parse_args()
    names = args.only or list(BENCHMARKS)
    results: dict[str, dict | None] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="notifier-bench-run-") as tmp:
        for name in names:
            print(f"-- {name} …", flush=True)
            res, took, text = run_one(name, args.quick, Path(tmp) / f"{name}.json")
            print(text.rstrip())
            print(f"   ({took:.0f} s)", flush=True)
            results[name] = res
    total = time.perf_counter() - started
    lines = [
        machine_line(),
        f"All benchmarks took {total:.0f} s{' (--quick)' if args.quick else ''}.",
        "",
        *table(results),
    ]
    print("\n" + "\n".join(lines))
    if not args.quick and not args.no_readme and set(names) == set(BENCHMARKS):
        update_readme(lines)
        print(f"\n{HERE / 'README.md'} updated")
    return 0 if all(r is not None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

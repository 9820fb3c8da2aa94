"""What every saved report records beside its figures: the machine, the code, where it is kept.

The benchmarks, the load-test runner, the drills and the simulator all save JSON reports
that `tally bench page` turns into BENCHMARKS.md; figures are only comparable between runs
of the same code on the same machine, so each report says both. This module is small and
imports nothing of Tally, so the simulator can use it without importing a benchmark.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

import orjson

# The checkout this file sits in (core/ is one level below the repository root).
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_description() -> str:
    """Architecture, core count and CPU model, memory and Python, on one line."""
    model = "unknown cpu"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({model}), {memory_gib:.0f} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def code_version() -> str:
    """The commit this tree is at (40 hex digits), `-dirty` if tracked files differ from it;
    "unknown" outside a git checkout (an installed tally)."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--abbrev=40", "--dirty"],
            cwd=SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def save_report(report: dict[str, Any], directory: str) -> None:
    """Keep the figures as the benchmark page's source: `tally bench page` renders them.
    The report records the code it measured, so runs of the same code can be compared."""
    report.setdefault("code_version", code_version())
    os.makedirs(directory, exist_ok=True)
    name = f"{report['benchmark']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    with open(os.path.join(directory, name), "wb") as out:
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")

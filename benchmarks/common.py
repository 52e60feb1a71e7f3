"""What every benchmark shares: timing through tensorslim.report.timing, a table on stdout, JSON in
benchmarks/results/<name>.json with the machine and how much of it was free."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from tensorslim.report.timing import Comparison, available_cores, compare

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NOT_MEASURED = "not measured"


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "processor": platform.processor() or platform.machine(),
    }


def timed(contenders: Mapping[str, Callable[[], object]], **compare_kwargs) -> Comparison:
    """compare() the contenders (the first is the baseline), logging each verdict to stdout."""
    result = compare(contenders, **compare_kwargs)
    print(f"timing of {', '.join(contenders)}: " + ("steady" if result.trusted else result.reason), flush=True)
    return result


def speedup_cell(result: Comparison, name: str) -> float | str:
    """The median speed-up of `name` over the baseline, or 'not measured' when the machine was busy."""
    value = result.speedup(name)
    return NOT_MEASURED if value is None else value


def verdict(results: list[Comparison]) -> str:
    """A note for the table: whether every timing is trusted, and why not."""
    bad = [r.reason for r in results if not r.trusted]
    if not bad:
        return "every timing steady (interleaved rounds, spreads and foreign load within limits)"
    return "SPEED-UPS NOT MEASURED where marked, " + "; ".join(bad)


def emit(name: str, rows: list[dict], notes: str = "") -> Path:
    """Print `rows` as an aligned table and write them with machine info to results/<name>.json."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if notes:
        print(notes)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": name,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": machine(),
                "rows": rows,
                "notes": notes,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return out

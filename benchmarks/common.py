"""What every benchmark shares: print a table, write JSON to benchmarks/results/<name>.json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine()}


def emit(name: str, rows: list[dict], notes: str = "") -> Path:
    """Print `rows` as an aligned table and write them with machine info to results/<name>.json."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if notes:
        print(notes)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                               "rows": rows, "notes": notes}, indent=2))
    print(f"wrote {out}")
    return out

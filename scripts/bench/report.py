"""Output and units: one `name: value unit` line per figure, `# ...` notes; sizes and
percentiles; what the broker leaves to read (<data-dir>/stats.json, the store, its log)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

MB = 1e6
GB = 1e9


# ----------------------------------------------------------------- output
def fig(name: str, value, unit: str = "") -> None:
    """One figure per line, stable format: `name: value unit`."""
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    print(f"{name}: {value} {unit}".rstrip(), flush=True)


def note(msg: str) -> None:
    print(f"# {msg}", flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 256MiB, 2GiB)")
    n = float(m.group(1))
    unit = (m.group(2) or "b").lower().rstrip("b")
    mult = {"": 1, "k": 1000, "ki": 1024, "m": 10**6, "mi": 2**20, "g": 10**9, "gi": 2**30}[unit]
    return int(n * mult)


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# ----------------------------------------------------------------- a run's end
def fresh_dir(path: Path) -> None:
    """Wipes and recreates the scratch directory."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def log_figures(broker) -> None:
    """How many WARN/ERROR/panic lines the broker logged, and the first 15 of them."""
    full = broker.log_path.read_text(errors="replace")
    bad = [l for l in full.splitlines() if re.search(r"\b(WARN|ERROR)\b|panicked", l)]
    fig("broker_log_warn_error_lines", len(bad))
    for l in bad[:15]:
        note(f"broker log: {l[:300]}")


def problem_notes(problems: list[str]) -> None:
    for p in problems:
        note(f"PROBLEM: {p}")


def clean_up(a, broker) -> None:
    """Removes the scratch dir, unless --keep."""
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    else:
        note(f"kept {a.dir} (broker log: {broker.log_path})")


# ----------------------------------------------------------------- broker state
def read_stats(path: Path, attempts: int = 5) -> dict | None:
    """The broker's <data-dir>/stats.json (rewritten atomically every 5 s): None when
    missing; a half-written or unparsable file is retried a few times."""
    for i in range(attempts):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        try:
            d = json.loads(text)
            if isinstance(d, dict):
                return d
        except ValueError:
            pass
        time.sleep(0.05 * (i + 1))
    return None


def store_walk(store_dir: Path | None) -> dict | None:
    """Objects and bytes under segments/ (flush objects), compacted/ (per-partition
    segments) and in the whole store directory."""
    if store_dir is None:
        return None
    out = {"flush_objects": 0, "flush_bytes": 0, "compacted_objects": 0, "compacted_bytes": 0,
           "total_objects": 0, "total_bytes": 0}
    for dirpath, _dirs, files in os.walk(store_dir):
        rel = Path(dirpath).relative_to(store_dir).parts
        kind = {"segments": "flush", "compacted": "compacted"}.get(rel[0] if rel else "")
        for name in files:
            try:
                size = os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                continue  # deleted while walking (GC)
            out["total_objects"] += 1
            out["total_bytes"] += size
            if kind:
                out[f"{kind}_objects"] += 1
                out[f"{kind}_bytes"] += size
    return out


def raft_snapshot_bytes(data_dir: Path) -> int | None:
    for name in ("snapshot.bin", "snapshot.json"):
        try:
            return (data_dir / "raft" / name).stat().st_size
        except OSError:
            continue
    return None

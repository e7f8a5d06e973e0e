"""What a part's result holds and how it is written: ``<part>.json`` and ``<part>.md``.

Every result is self-describing: the command, the date, the versions, the machine (with its load
average, since a busy machine moves every time), the threads, then

- ``rows``: one measurement each, with a unique ``id``;
- ``ratios``: ``value = numerator / denominator``, each side a row's metric or another ratio,
  named by reference so that anyone can recompute it from the rows;
- ``targets``: a ratio (or a row's metric) against the issue's limit, ``met`` when it holds.

Targets are ratios within one run, never absolute times: on a shared CPU only ratios repeat.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_text

PACKAGES = ("omoe_lab", "torch", "transformers", "numpy", "peft", "mixlora")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): above the core count,
    other work shared the cores and the times are inflated."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment(command: str, device: torch.device) -> dict[str, Any]:
    """The header every part's JSON starts with."""
    machine = {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "machine": machine,
    }


# --- ratios and targets ---------------------------------------------------------------------------
def _value(source: dict, rows: dict[str, dict], ratios: dict[str, dict]) -> float | None:
    if "ratio" in source:
        return ratios[source["ratio"]]["value"]
    value = rows[source["row"]].get(source["metric"])
    return None if value is None else float(value)


def ratio(name: str, numerator: dict, denominator: dict, rows: list[dict], ratios: list[dict]) -> dict:
    """Append and return ``{"name", "numerator", "denominator", "value"}``; each side is
    ``{"row": id, "metric": key}`` or ``{"ratio": name}``. ``value`` is None when a side was not
    measured (a peer not installed) or the denominator is not positive."""
    by_id = {row["id"]: row for row in rows}
    by_name = {r["name"]: r for r in ratios}
    top, bottom = _value(numerator, by_id, by_name), _value(denominator, by_id, by_name)
    value = top / bottom if top is not None and bottom is not None and bottom > 0 else None
    entry = {"name": name, "numerator": numerator, "denominator": denominator, "value": value}
    ratios.append(entry)
    return entry


def row_metric(row_id: str, metric: str) -> dict:
    return {"row": row_id, "metric": metric}


def of_ratio(name: str) -> dict:
    return {"ratio": name}


def target(description: str, source: dict, limit: float, rows: list[dict], ratios: list[dict], at_most: bool = True) -> dict:
    """``{"target", "source", "measured", "limit", "at_most", "met"}``; ``met`` is None when not measured."""
    measured = _value(source, {row["id"]: row for row in rows}, {r["name"]: r for r in ratios})
    met = None if measured is None else (measured <= limit if at_most else measured >= limit)
    return {"target": description, "source": source, "measured": measured, "limit": limit, "at_most": at_most, "met": met}


# --- writing ----------------------------------------------------------------------------------------
def write_part(result: dict, folder: Path) -> tuple[Path, Path]:
    """Write ``<folder>/<part>.json`` and ``<folder>/<part>.md`` (atomically); return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_text(folder / f"{result['part']}.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
    md_path = atomic_write_text(folder / f"{result['part']}.md", markdown(result))
    return Path(json_path), Path(md_path)


def format_number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude == 0 or 0.01 <= magnitude < 1e5:
            return f"{value:,.3g}" if magnitude < 100 else f"{value:,.1f}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_number(v) for v in value)
    return str(value).replace("|", "\\|")


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(format_number(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def _side(source: dict) -> str:
    return source["ratio"] if "ratio" in source else f"{source['metric']} of {source['row']}"


def targets_table(targets: list[dict]) -> list[str]:
    shown = [{
        "target": t["target"], "limit": ("≤ " if t["at_most"] else "≥ ") + format_number(t["limit"]),
        "measured": t["measured"], "met?": "not measured" if t["met"] is None else ("met" if t["met"] else "**not met**"),
    } for t in targets]
    return _table(shown, ["target", "limit", "measured", "met?"])


GROUP_KEYS = ("kind", "group", "sweep")  # rows of a part that share their columns


def _row_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows split by the first of ``GROUP_KEYS`` they have (one table each, without empty columns)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = next((k for k in GROUP_KEYS if k in row), None)
        groups.setdefault(f"{key} {row[key]}" if key else "", []).append(row)
    return groups


def markdown(result: dict) -> str:
    """The part as a page: what ran where, the targets, the ratios, then every row."""
    machine = result["machine"]
    lines = [
        f"# Benchmark: {result['part']}{' (smoke sizes: not a measurement)' if result.get('smoke') else ''}", "",
        f"`{result['command']}` — {result['date']}, {result['seconds']:.0f} s", "",
        f"device {result['device']}{', ' + machine['gpu'] if machine.get('gpu') else ''}; {result['threads']} threads; "
        f"{machine['cpu_count']} CPUs ({machine['processor'] or machine['machine']}); load average at start "
        f"{format_number(machine['load_average_at_start'])}, at end {format_number(result.get('load_average_at_end'))}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v), "",
    ]
    if result.get("description"):
        lines += [result["description"], ""]
    if result["targets"]:
        lines += ["## Targets", "", *targets_table(result["targets"]), ""]
    if result["ratios"]:
        lines += ["## Ratios (same run)", "", *_table(
            [{"ratio": r["name"], "value": r["value"], "= numerator": _side(r["numerator"]),
              "/ denominator": _side(r["denominator"])}
             for r in result["ratios"]], ["ratio", "value", "= numerator", "/ denominator"]), ""]
    lines += ["## Rows", ""]
    for group, rows in _row_groups(result["rows"]).items():
        columns = list(dict.fromkeys(key for row in rows for key in row if key not in ("times_ms",)))
        lines += ([f"{group}:", ""] if group else []) + [*_table(rows, columns), ""]
    if result.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in result["notes"]], ""]
    return "\n".join(lines)

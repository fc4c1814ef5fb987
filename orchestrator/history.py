"""Inference latency over time: a JSON Lines history and its trend.

Each run appends one line per suite to ``ARTIFACTS/history.jsonl`` (time to first
token, total latency, tokens per second, outcome). CI jobs that keep the
artifacts dir between runs (a cache) get a trend for free; ``python -m
orchestrator history`` shows it as a table with a sparkline and can draw a PNG.

The regression check compares a run with the median of the recent passed runs:
the median, because one noisy run in the history should not move the bar.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
BARS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Entry:
    at: str
    suite: str
    model: str
    outcome: str
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    completion_tokens: int | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        """Build an entry from a run record's ``to_dict()``."""
        props: dict[str, str] = dict(record.get("properties") or {})
        for phase in record.get("phases") or []:
            props.update(phase.get("properties") or {})

        def num(key: str) -> float | None:
            try:
                return float(props[key])
            except (KeyError, ValueError):
                return None

        tokens = num("completion_tokens")
        return cls(
            at=str(record.get("started_at") or ""),
            suite=str(record.get("suite", "")),
            model=props.get("model", ""),
            outcome=str(record.get("outcome", "")),
            latency_ms=num("inference_latency_ms"),
            ttft_ms=num("time_to_first_token_ms"),
            tokens_per_second=num("tokens_per_second"),
            completion_tokens=int(tokens) if tokens is not None else None,
        )


class HistoryError(Exception):
    """The history file is unreadable; the message names the file and line."""


def append(path: Path, entries: Iterable[Entry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(asdict(entry), sort_keys=True) + "\n")


def load(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            entries.append(Entry(**{k: data.get(k) for k in Entry.__dataclass_fields__}))
        except (ValueError, TypeError) as exc:
            raise HistoryError(f"{path}:{n}: not a history entry ({exc})") from None
    return entries


def baseline(entries: Sequence[Entry], *, suite: str, model: str, window: int = 10) -> float | None:
    """The median latency of the last ``window`` passed runs of this suite and model."""
    values = [
        e.latency_ms
        for e in entries
        if e.suite == suite and e.model == model and e.outcome == "passed" and e.latency_ms
    ]
    recent = values[-window:]
    return statistics.median(recent) if recent else None


def regression(latency_ms: float, base_ms: float | None, threshold_pct: float) -> str | None:
    """A reason when ``latency_ms`` is more than ``threshold_pct`` % above the baseline."""
    if base_ms is None or base_ms <= 0:
        return None
    change = (latency_ms - base_ms) / base_ms * 100
    if change > threshold_pct:
        return (
            f"inference latency regressed: {latency_ms:.0f} ms against a median of "
            f"{base_ms:.0f} ms over recent passed runs (+{change:.0f}% > {threshold_pct:g}%)"
        )
    return None


def sparkline(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    lo, hi = min(present), max(present)
    span = hi - lo or 1.0
    return "".join(
        " " if v is None else BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))]
        for v in values
    )


def render(entries: Sequence[Entry], *, last: int = 20) -> Any:
    """A rich renderable: the trend line, then the recent runs."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shown = list(entries)[-last:]
    table = Table(title=f"inference latency, last {len(shown)} of {len(entries)} runs")
    for col in ("when", "suite", "model", "outcome", "TTFT ms", "latency ms", "tok/s"):
        table.add_column(col, justify="right" if col.endswith(("ms", "tok/s")) else "left")
    for e in shown:
        table.add_row(
            e.at[:19],
            e.suite,
            e.model,
            e.outcome,
            _fmt(e.ttft_ms),
            _fmt(e.latency_ms),
            _fmt(e.tokens_per_second, 1),
        )
    lat = [e.latency_ms for e in shown]
    ttft = [e.ttft_ms for e in shown]
    lines = Text(f"latency {sparkline(lat)}\nTTFT    {sparkline(ttft)}")
    return Group(lines, table)


def write_png(entries: Sequence[Entry], path: Path) -> Path:
    """Draw latency and TTFT per run. Needs matplotlib (the ``charts`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HistoryError(
            "drawing a chart needs matplotlib: pip install 'orchestrator[charts]'"
        ) from None
    xs = list(range(1, len(entries) + 1))
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    for label, values in (
        ("latency (ms)", [e.latency_ms for e in entries]),
        ("time to first token (ms)", [e.ttft_ms for e in entries]),
    ):
        pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    failed = [x for x, e in zip(xs, entries, strict=True) if e.outcome != "passed"]
    for x in failed:
        ax.axvline(x, color="red", alpha=0.2)
    ax.set_xlabel("run")
    ax.set_ylabel("ms")
    ax.set_title("inference latency over runs (red: failed runs)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

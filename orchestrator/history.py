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
from datetime import UTC, datetime
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


def when(at: str) -> str:
    """A run's start as ``2026-11-25 10:00`` (UTC): the minute is enough to find a run,
    and 16 characters keep the table inside 80 columns."""
    parsed = _parse_time(at)
    return parsed.strftime("%Y-%m-%d %H:%M") if parsed is not None else at[:16]


def render(entries: Sequence[Entry], *, last: int = 20) -> Any:
    """A rich renderable: the trend line, then the recent runs (readable at 80 columns:
    a suite or model shared by every row is named once in the title instead)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shown = list(entries)[-last:]
    first = len(entries) - len(shown) + 1
    suites = {e.suite for e in shown}
    models = {e.model for e in shown}
    shared = [*(suites if len(suites) == 1 else ()), *(models if len(models) == 1 else ())]
    title = f"inference latency, last {len(shown)} of {len(entries)} runs"
    if shared:
        title += f" ({', '.join(x for x in shared if x)})"
    table = Table(title=title)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("when (UTC)", no_wrap=True)
    if len(suites) > 1:
        table.add_column("suite", overflow="fold")
    if len(models) > 1:
        table.add_column("model", overflow="fold")
    table.add_column("outcome", no_wrap=True)
    for col in ("TTFT ms", "latency ms", "tok/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for n, e in enumerate(shown, start=first):
        row: list[str | Text] = [str(n), when(e.at)]
        if len(suites) > 1:
            row.append(e.suite)
        if len(models) > 1:
            row.append(e.model)
        row.append(Text(e.outcome, style="green" if e.outcome == "passed" else "red"))
        row += [_fmt(e.ttft_ms), _fmt(e.latency_ms), _fmt(e.tokens_per_second, 1)]
        table.add_row(*row)
    lat = [e.latency_ms for e in shown]
    ttft = [e.ttft_ms for e in shown]
    lines = Text(f"latency {sparkline(lat)}\nTTFT    {sparkline(ttft)}")
    return Group(lines, table)


def chart(entries: Sequence[Entry]) -> Any:
    """Draw latency and time to first token, each on its own axis (TTFT is often a
    tenth of the latency and would lie flat on a shared one), against the runs' dates
    (or their numbers, when a date is missing), with failed runs marked.

    Needs matplotlib (the ``charts`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise HistoryError(
            "drawing a chart needs matplotlib: pip install 'orchestrator[charts]'"
        ) from None
    times = [_parse_time(e.at) for e in entries]
    dated = bool(times) and all(t is not None for t in times)
    xs: list[Any] = times if dated else list(range(1, len(entries) + 1))
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(8, 5), dpi=100)
    failed = [x for x, e in zip(xs, entries, strict=True) if e.outcome != "passed"]
    series = (
        ("latency (ms)", [e.latency_ms for e in entries], "tab:blue"),
        ("time to first token (ms)", [e.ttft_ms for e in entries], "tab:orange"),
    )
    for ax, (label, values, colour) in zip(axes, series, strict=True):
        # By time: entries of runs that overlapped (--parallel) are appended in any order.
        pts = sorted((x, v) for x, v in zip(xs, values, strict=True) if v is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour)
        for n, x in enumerate(failed):
            ax.axvline(
                x, color="red", alpha=0.35, linewidth=2, label="failed run" if n == 0 else None
            )
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if failed:
            ax.legend(loc="upper left")
    bottom = axes[-1]
    if dated:
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        bottom.xaxis.set_major_locator(locator)
        formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        bottom.xaxis.set_major_formatter(formatter)
        bottom.set_xlabel("run started (UTC)")
    else:
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_xlabel("run")
    axes[0].set_title("inference latency over runs" + (" (red: failed runs)" if failed else ""))
    fig.tight_layout()
    return fig


def write_png(entries: Sequence[Entry], path: Path) -> Path:
    """Draw :func:`chart` to ``path``. Needs matplotlib (the ``charts`` extra)."""
    fig = chart(entries)
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _parse_time(at: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

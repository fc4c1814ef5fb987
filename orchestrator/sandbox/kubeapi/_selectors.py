"""Label and field selectors with kube-apiserver's grammar and error messages."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import bad_request


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and labels[self.key] == self.values[0]
        if self.op == "!=":
            return not present or labels[self.key] != self.values[0]
        if self.op == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # notin


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)\s*)?$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` value list."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise bad_request("unable to parse requirement: found '', expected: ',' or ')'")
    parts.append("".join(cur))
    return parts


class LabelSelector:
    """A parsed `labelSelector`; an empty one matches everything."""

    def __init__(self, text: str | None) -> None:
        self.requirements: list[_Requirement] = []
        if not text or not text.strip():
            return
        for part in _split_top_level(text):
            if not part.strip():
                raise bad_request("unable to parse requirement: found '', expected: identifier")
            self.requirements.append(self._parse(part))

    @staticmethod
    def _parse(part: str) -> _Requirement:
        m = _EQ_RE.match(part)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            return _Requirement(m.group(1), op, (m.group(3),))
        m = _SET_RE.match(part)
        if m:
            negated, key, op, values = m.groups()
            if op:
                if negated:
                    raise bad_request(
                        f"unable to parse requirement: found '{op}', expected: ',' or 'end of string'"
                    )
                vals = tuple(v.strip() for v in values.split(",") if v.strip())
                return _Requirement(key, op, vals)
            return _Requirement(key, "!exists" if negated else "exists")
        raise bad_request(
            f"unable to parse requirement: {part.strip()!r} is not a valid label selector"
        )

    def matches(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)


FieldGetter = Callable[[dict[str, Any]], dict[str, str]]


def _get(obj: dict[str, Any], dotted: str) -> str:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_getter(paths: list[str]) -> FieldGetter:
    """Extra selectable fields of a kind, beyond metadata.name/namespace."""

    def get(obj: dict[str, Any]) -> dict[str, str]:
        return {p: _get(obj, p) for p in paths}

    return get


class FieldSelector:
    """A parsed `fieldSelector` (`=`, `==`, `!=`, comma-separated), checked against the kind's fields."""

    def __init__(self, text: str | None, supported: set[str]) -> None:
        self.terms: list[tuple[str, bool, str]] = []
        if not text or not text.strip():
            return
        for part in text.split(","):
            m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
            if not m:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key, op, value = m.groups()
            if key not in supported:
                raise bad_request(f"field label not supported: {key}")
            self.terms.append((key, op != "!=", value))

    def matches(self, fields: dict[str, str]) -> bool:
        return all((fields.get(k, "") == v) == eq for k, eq, v in self.terms)

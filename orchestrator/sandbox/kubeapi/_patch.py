"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902); strategic merge is treated as merge."""

from __future__ import annotations

from typing import Any

from ._clone import clone
from ._errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return clone(patch)
    out = clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [_unescape(t) for t in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    cur = doc
    for t in tokens[:-1]:
        try:
            cur = cur[int(t)] if isinstance(cur, list) else cur[t]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: path {path!r} not found",
            ) from None
    return cur


def _get(doc: Any, path: str) -> Any:
    tokens = _split(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    try:
        return parent[int(tokens[-1])] if isinstance(parent, list) else parent[tokens[-1]]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: path {path!r} not found",
        ) from None


def _remove(doc: Any, path: str) -> Any:
    value = _get(doc, path)
    tokens = _split(path)
    parent = _parent(doc, tokens, path)
    if isinstance(parent, list):
        del parent[int(tokens[-1])]
    else:
        del parent[tokens[-1]]
    return value


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    tokens = _split(path)
    if not tokens:
        return clone(value)
    if replace:
        _get(doc, path)
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if replace:
            parent[idx] = clone(value)
        else:
            parent.insert(idx, clone(value))
    elif isinstance(parent, dict):
        parent[last] = clone(value)
    else:
        raise ApiError(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: path {path!r} not found",
        )
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = clone(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, op.get("value"))
        elif kind == "replace":
            doc = _add(doc, path, op.get("value"), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            doc = _add(doc, path, _remove(doc, op.get("from", "")))
        elif kind == "copy":
            doc = _add(doc, path, _get(doc, op.get("from", "")))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: testing value {path} failed",
                )
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


def apply_patch(target: Any, content_type: str, patch: Any) -> Any:
    base = content_type.split(";")[0].strip()
    if base in (MERGE, STRATEGIC, APPLY):
        return merge_patch(target, patch)
    if base == JSON_PATCH:
        return json_patch(target, patch)
    raise unsupported_media_type(content_type)

"""Stateless transform steps compiled into one function per transform.

A compiled chain maps one input token to zero or more ``(output_topic, token)``
pairs. Guarantees:

* Deterministic: the same input token always yields the same outputs, with the
  same ids. A step that keeps a row 1:1 keeps its token id; ``flat_map`` gives
  the i-th child the id ``<parent>/<i>`` (so a re-run after a crash re-creates
  identical ids and sinks stay idempotent).
* User callables receive and return *payload* dicts (``module:function``), or for
  ``map_batch`` Arrow RecordBatches of payloads (``app.transforms.batch_fn``); they
  are imported by dotted path only — a pipeline file cannot carry code.
* An exception inside any step propagates to the runner, which sends that one row
  to the DLQ with the error and carries on with the batch.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Iterable
from typing import Any

from app.tokens import Token, child_token_id

Item = tuple[str | None, Token]
StepFn = Callable[[list[Item]], list[Item]]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}


class StepError(ValueError):
    """A step definition that cannot be compiled (bad import path, unknown op)."""


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``module:function``; errors name the path and what is wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise StepError(f"{path!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StepError(f"{path!r}: cannot import module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise StepError(f"{path!r}: {module_name} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def _with_payload(token: Token, payload: dict[str, Any]) -> Token:
    new = token.copy()
    new["payload"] = payload
    return new


def filter_step(field: str, op: str, value: Any) -> StepFn:
    if op == "exists":
        return lambda items: [it for it in items if field in it[1]["payload"]]
    cmp = _OPS.get(op)
    if cmp is None:
        raise StepError(f"filter: unknown op {op!r}; use one of {', '.join([*_OPS, 'exists'])}")

    def run(items: list[Item]) -> list[Item]:
        out = []
        for it in items:
            v = it[1]["payload"].get(field)
            if v is not None and cmp(v, value):
                out.append(it)
        return out

    return run


def map_step(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> StepFn:
    def run(items: list[Item]) -> list[Item]:
        out = []
        for topic, tok in items:
            result = fn(tok["payload"])
            if not isinstance(result, dict):
                raise TypeError(f"map function returned {type(result).__name__}, expected dict")
            out.append((topic, _with_payload(tok, result)))
        return out

    return run


def map_batch_step(fn: Callable[[Any], Any], name: str) -> StepFn:
    """The row path of a ``map_batch`` step: each row is a one-row batch of its own
    (``app.transforms.batch_fn``); pyarrow is imported only when a pipeline uses one."""
    from app.transforms.batch_fn import apply_batch_fn

    def run(items: list[Item]) -> list[Item]:
        return [(topic, _with_payload(tok, apply_batch_fn(fn, [tok["payload"]], name)[0])) for topic, tok in items]

    return run


def flat_map_step(fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]) -> StepFn:
    def run(items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for topic, tok in items:
            for i, payload in enumerate(fn(tok["payload"])):
                if not isinstance(payload, dict):
                    raise TypeError(f"flat_map function yielded {type(payload).__name__}, expected dict")
                child = _with_payload(tok, payload)
                child["token_id"] = child_token_id(tok["token_id"], i)
                out.append((topic, child))
        return out

    return run


def project_step(fields: list[str] | None, rename: dict[str, str] | None) -> StepFn:
    keep = list(fields) if fields else None
    ren = dict(rename or {})

    def run(items: list[Item]) -> list[Item]:
        out = []
        for topic, tok in items:
            p = tok["payload"]
            if keep is not None:
                p = {k: p[k] for k in keep if k in p}
            if ren:
                p = {ren.get(k, k): v for k, v in p.items()}
            out.append((topic, _with_payload(tok, p)))
        return out

    return run


def route_step(field: str, routes: dict[str, str], default: str | None) -> StepFn:
    def run(items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for _topic, tok in items:
            v = tok["payload"].get(field)
            dest = routes.get(str(v), default) if v is not None else default
            if dest is not None:
                out.append((dest, tok))
        return out

    return run


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is a bool")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"{v!r} has a fraction")
        return int(v)
    if isinstance(v, str):
        return int(v)
    raise ValueError(f"{type(v).__name__} value")


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"{type(v).__name__} value {v!r}")
    return float(v)


def _to_string(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"  # the JSON spelling
    if isinstance(v, str | int | float):
        return str(v)
    raise ValueError(f"{type(v).__name__} value")


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v in ("true", "false"):
        return v == "true"
    raise ValueError(f"{v!r} is neither a bool nor 'true'/'false'")


CASTS: dict[str, Callable[[Any], Any]] = {"int": _to_int, "float": _to_float, "string": _to_string, "bool": _to_bool}


def cast_step(fields: dict[str, str]) -> StepFn:
    """Convert the named payload fields (absent and null values stay as they are); a value
    that does not convert raises ``ValueError`` naming the field, so the row is dead-lettered."""
    casts = []
    for name, kind in fields.items():
        fn = CASTS.get(kind)
        if fn is None:
            raise StepError(f"cast: field {name!r}: unknown type {kind!r}; use one of {', '.join(CASTS)}")
        casts.append((name, kind, fn))

    def run(items: list[Item]) -> list[Item]:
        out = []
        for topic, tok in items:
            p = dict(tok["payload"])
            for name, kind, fn in casts:
                v = p.get(name)
                if v is None:
                    continue
                try:
                    p[name] = fn(v)
                except ValueError as exc:
                    raise ValueError(f"cast: field {name!r} to {kind}: {exc}") from None
            out.append((topic, _with_payload(tok, p)))
        return out

    return run


class CompiledChain:
    """One transform's steps folded into a per-token function; rows routed nowhere are
    dropped. ``dropped`` counts, per step label, the input rows a step left with no
    output (a filter that refused them, a route with no destination); the runner
    takes the counts with ``take_dropped`` once per batch, for the commit report."""

    def __init__(self, name: str, steps: list[StepFn], default_output: str | None, labels: list[str]) -> None:
        self.name = name
        self.steps = list(zip(labels, steps, strict=True))
        self.default_output = default_output
        self.dropped: dict[str, int] = {}

    def __call__(self, token: Token) -> list[tuple[str, Token]]:
        tok = token.copy()
        tok["lineage"] = [*token["lineage"], self.name]
        items: list[Item] = [(None, tok)]
        for label, step in self.steps:
            items = step(items)
            if not items:
                self.dropped[label] = self.dropped.get(label, 0) + 1
                return []
        default = self.default_output
        result: list[tuple[str, Token]] = []
        for topic, t in items:
            dest = topic or default
            if dest is not None:
                result.append((dest, t))
        return result

    def count_dropped(self, label: str, rows: int) -> None:
        """Add ``rows`` refused by the step ``label`` outside ``__call__`` (the columnar path)."""
        if rows:
            self.dropped[label] = self.dropped.get(label, 0) + rows

    def take_dropped(self) -> dict[str, int]:
        out, self.dropped = self.dropped, {}
        return out


def compile_chain(
    name: str, steps: list[StepFn], default_output: str | None, labels: list[str] | None = None
) -> CompiledChain:
    """Fold ``steps`` into one per-token function; ``labels`` name the steps in the drop
    counts (default ``<transform>.step<i>``)."""
    return CompiledChain(name, steps, default_output, labels or [f"{name}.step{i}" for i in range(len(steps))])

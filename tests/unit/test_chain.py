"""Transform steps: deterministic outputs and ids, routing, errors surface per row."""

from __future__ import annotations

import pytest

from app.faults import _make
from app.sources.generator import GeneratorSource
from app.transforms.chain import (
    StepError,
    compile_chain,
    filter_step,
    flat_map_step,
    load_callable,
    map_step,
    project_step,
    route_step,
)


def _tok(i: int = 1):  # type: ignore[no-untyped-def]
    return GeneratorSource("g", rows=None, seed=5).poll(i + 1).tokens[i]


def test_filter_map_project_keep_id_and_add_lineage() -> None:
    chain = compile_chain(
        "tr",
        [
            filter_step("quantity", "ge", 1),
            map_step(load_callable("app.transforms.examples:add_amount_eur")),
            project_step(["id", "amount", "amount_eur"], {"amount": "cents"}),
        ],
        "out",
    )
    tok = _tok()
    [(dest, out)] = chain(tok)
    assert dest == "out" and out["token_id"] == tok["token_id"]
    assert set(out["payload"]) == {"id", "cents", "amount_eur"}
    assert out["lineage"] == ["tr"] and tok["lineage"] == []
    assert compile_chain("tr", [filter_step("quantity", "gt", 100)], "out")(tok) == []


def test_flat_map_children_have_deterministic_ids_and_route() -> None:
    chain = compile_chain(
        "tr",
        [
            flat_map_step(load_callable("app.transforms.examples:explode_note_words")),
            route_step("word", {"gift": "gifts"}, "other"),
        ],
        None,
    )
    tok = _tok()
    tok["payload"]["note"] = "gift wrap please"
    outs = chain(tok)
    assert [(d, t["token_id"]) for d, t in outs] == [
        ("gifts", f"{tok['token_id']}/0"),
        ("other", f"{tok['token_id']}/1"),
        ("other", f"{tok['token_id']}/2"),
    ]
    assert chain(tok) == outs


def test_errors() -> None:
    with pytest.raises(StepError, match="cannot import"):
        load_callable("no.such.module:f")
    with pytest.raises(StepError, match="no callable"):
        load_callable("app.transforms.examples:nope")
    bad = compile_chain("tr", [map_step(lambda p: 1 / 0)], "out")  # type: ignore[arg-type,return-value]
    with pytest.raises(ZeroDivisionError):
        bad(_tok())


def test_crash_points_parse_and_count() -> None:
    import subprocess
    import sys

    code = "from app.faults import crash_point as c\nc('a'); c('b'); print('x', flush=True); c('b')"
    env = {"LEDGERFLOW_CRASH_AT": "b:2", "PATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 86 and proc.stdout == "x\n" and "crash point b hit #2" in proc.stderr
    _make(None)("anything")  # unset: a no-op

"""`personatag criterion diff` on every store: the text and membership diff of two
versions, as the API's `GET /criteria/{name}/diff` computes it."""

from __future__ import annotations

from tests.test_cli import CLI, cli

__all__ = ["cli"]


def test_criterion_diff(cli: CLI) -> None:
    cli("init")
    cli("persona", "add", "emea", "--name", "EMEA readers", "--category", "region")
    cli("criterion", "add", "readers", "--persona", "emea", "--expr", 'region = "EMEA"')
    cli("criterion", "edit", "readers", "--expr", 'region = "EMEA" or region = "APAC"')
    out = cli.json("criterion", "diff", "readers", "--json")
    assert (out["from"], out["to"]) == (1, 2)
    assert {"op": "add", "text": ' or region = "APAC"'} in out["text"]
    m = out["membership"]
    assert (m["old_count"], m["new_count"]) == (10, 20)
    assert (m["gained"]["count"], m["lost"]["count"]) == (10, 0)
    assert m["gained"]["sample"][:2] == ["c0002", "c0006"]
    assert (m["would_enter"], m["would_exit"]) == (20, None)
    text = cli("criterion", "diff", "readers", "--from", "2", "--to", "1").stdout
    assert 'readers@2 -> readers@1: region = "EMEA"[- or region = "APAC"-]' in text
    assert "matches now: 20 -> 10 (+0 only @1, -10 only @2)" in text
    # an ongoing version with exit remove can remove people: would exit is counted
    cli("criterion", "edit", "readers", "--mode", "ongoing", "--exit", "remove")
    out = cli.json("criterion", "diff", "readers", "--json")
    assert out["membership"]["would_exit"] == 0
    bad = cli("criterion", "diff", "readers", "--to", "9", ok=False)
    assert bad.returncode != 0 and "has no version 9 (it has 1, 2, 3)" in bad.stderr

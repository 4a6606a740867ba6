"""The engine registry: built-ins and third-party engines installed as plugins."""

from __future__ import annotations

import sys
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag import engines
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.engines.flink.plugin import plugin as flink_plugin
from personatag.engines.local.batch import LocalEngine
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.engines.plugin import EnginePlugin
from personatag.errors import ConfigError, InputError
from personatag.store import Store
from personatag.streaming.runner import stream_target
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import add_contacts, population

ROOT = Path(__file__).resolve().parents[2]

# A distribution as pip would install it: a module, and a dist-info whose
# entry_points.txt declares the module's plugin in the personatag.engines group.
PLUGIN_SOURCE = """
import threading

from personatag.engines.base import StreamEngine
from personatag.engines.local.batch import LocalEngine
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.engines.plugin import EnginePlugin

RUNS = []


class EchoBatch(LocalEngine):
    name = "echo"


class EchoStream(StreamProcessor):
    def cycle(self) -> float:
        RUNS.append(self.store)
        self.request_stop()
        return 0.0


class Incomplete(StreamEngine):  # no cycle()
    def __init__(self, store, settings=None, metrics=None) -> None:
        self.store = store


plugin = EnginePlugin("echo", batch=lambda: EchoBatch, stream=lambda: EchoStream)
incomplete = EnginePlugin("half", stream=lambda: Incomplete)
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The `echo` and `half` engines installed as a third-party distribution."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_engine.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = site / "echo_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[personatag.engines]\necho = echo_engine:plugin\nhalf = echo_engine:incomplete\n"
    )
    monkeypatch.syspath_prepend(str(site))
    engines.reload_plugins()
    yield site
    sys.modules.pop("echo_engine", None)
    monkeypatch.undo()
    engines.reload_plugins()


def test_the_built_ins_offer_batch_and_stream_engines(store: Store) -> None:
    assert {"local", "flink"} <= set(engines.engine_names())
    assert {"local", "flink"} <= set(engines.stream_engine_names())
    assert type(engines.get_engine("local", store, Settings())) is LocalEngine
    stream = engines.get_stream_engine("local", store, Settings())
    assert type(stream) is StreamProcessor
    assert engines.plugin("flink") is flink_plugin


def test_pyproject_declares_the_built_ins_as_entry_points() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["personatag.engines"] == engines.BUILTIN


def test_unknown_engines_are_named_with_the_choices(store: Store) -> None:
    with pytest.raises(
        InputError, match="unknown engine 'nope': available engines are columnar, flink, local"
    ):
        engines.get_engine("nope", store, Settings())
    with pytest.raises(ConfigError, match="unknown stream engine 'nope': use local or flink"):
        engines.get_stream_engine("nope", store, Settings())
    with pytest.raises(ValueError, match="unknown stream engine 'nope': use local or flink"):
        Settings(stream_engine="nope")


def test_a_third_party_engine_installs_as_a_plugin_and_is_used(
    installed: Path, store: Store
) -> None:
    assert "echo" in engines.engine_names()
    assert {"echo", "half"} <= set(engines.plugin_names())
    assert "echo" in engines.stream_engine_names()
    # The setting accepts it, and the stream runs the plugin's engine.
    settings = Settings(stream_engine="echo", stream_reconcile_s=0)
    import echo_engine  # type: ignore[import-not-found]

    stream_target(store, settings).run(threading.Event())
    assert [store] == echo_engine.RUNS
    # An ad hoc request on it tags like the local engine does.
    add_contacts(store, population(20))
    add_persona(store, "emea", name="EMEA", category="region")
    req = AdhocRequest(persona="emea", action=Action.TAG, expr='region = "EMEA"', engine="echo")
    result = run_adhoc(store, req, settings)
    assert result.status == "succeeded"
    t = store.tables
    with store.read() as conn:
        tagged = set(
            conn.scalars(
                select(t.contacts.c.id).join(
                    t.memberships, t.memberships.c.contact_pk == t.contacts.c.pk
                )
            )
        )
    assert tagged == {f"c{i:04d}" for i in range(20) if i % 4 == 0}


def test_an_incomplete_engine_fails_naming_what_it_lacks(installed: Path, store: Store) -> None:
    with pytest.raises(ConfigError, match=r"the stream engine 'half' .* does not implement cycle"):
        engines.get_stream_engine("half", store, Settings())


def test_registered_engines_cannot_replace_the_built_ins() -> None:
    with pytest.raises(InputError, match="cannot be replaced"):
        engines.register_plugin(EnginePlugin("local"))
    with pytest.raises(InputError, match="cannot be removed"):
        engines.unregister_engine("flink")

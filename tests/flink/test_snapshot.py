"""Snapshot folders: concurrent exports never collide; old ones are pruned (no cluster)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from personatag.buckets import LocalBucket
from personatag.domain import utcnow
from personatag.engines.flink.snapshot import MANIFEST, prune


def test_prune_keeps_current_snapshots_and_young_folders(tmp_path: Path) -> None:
    staging = LocalBucket("staging", tmp_path / "staging")
    now = utcnow()
    old = (now - timedelta(hours=3)).strftime("%Y%m%d%H%M%S")
    young = now.strftime("%Y%m%d%H%M%S")

    def folder(key: str, stamp: str) -> str:
        name = f"snapshots/{key}-{stamp}-abcdef01/"
        staging.put(name + "part-00000.json", b'{"pk": 1}\n')
        staging.put(name + MANIFEST, b"{}")
        return name

    def manifest(key: str, name: str, used: str) -> None:
        doc = {"folder": name, "used_at": used, "rows": 1, "bytes": 10}
        staging.put(f"snapshots/{key}.json", json.dumps(doc).encode())

    in_use = folder("a" * 32, old)  # old but used just now: kept
    manifest("a" * 32, in_use, now.isoformat())
    stale = folder("b" * 32, old)  # unused for 3 h: manifest and folder go
    manifest("b" * 32, stale, (now - timedelta(hours=3)).isoformat())
    orphan_old = folder("c" * 32, old)  # an interrupted export, long ago: goes
    orphan_young = folder("d" * 32, young)  # maybe still being written: kept

    assert prune(staging, keep_s=3600) == 2
    left = set(staging.list("snapshots/"))
    assert f"{in_use}part-00000.json" in left and f"{orphan_young}part-00000.json" in left
    assert not any(k.startswith((stale, orphan_old)) for k in left)
    assert f"snapshots/{'b' * 32}.json" not in left

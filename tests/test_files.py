"""Atomic writes: the old file or the whole new one, never a part, no temp left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from personatag.files import TEMP_SUFFIX, atomic_file, atomic_write


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write(target, "new ü")
    assert target.read_bytes() == "new ü".encode()
    atomic_write(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"half")
        temps = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
        assert len(temps) == 1
        assert temps[0].startswith(".state.json.")
        assert temps[0].endswith(TEMP_SUFFIX)
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

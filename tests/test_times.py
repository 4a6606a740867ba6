"""The one time formatter: the texts files, the API and the CLI show."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from personatag.times import iso, iso_any


def test_utc_is_written_z_with_microseconds_only_when_present() -> None:
    assert iso(datetime(2026, 6, 30, 12, 0, tzinfo=UTC)) == "2026-06-30T12:00:00Z"
    assert iso(datetime(2026, 6, 30, 12, 0, 0, 5, tzinfo=UTC)) == "2026-06-30T12:00:00.000005Z"


def test_timespec_and_none() -> None:
    moment = datetime(2026, 6, 30, 12, 0, 1, 234567, tzinfo=UTC)
    assert iso(moment, "milliseconds") == "2026-06-30T12:00:01.234Z"
    assert iso(moment, "seconds") == "2026-06-30T12:00:01Z"
    assert iso(None) is None


def test_other_offsets_and_naive_values_are_written_as_they_are() -> None:
    east = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 6, 30, 12, 0, tzinfo=east)) == "2026-06-30T12:00:00+02:00"
    assert iso(datetime(2026, 6, 30, 12, 0)) == "2026-06-30T12:00:00"


def test_iso_any_turns_times_into_text_and_keeps_the_rest() -> None:
    assert iso_any(datetime(2026, 6, 30, tzinfo=UTC)) == "2026-06-30T00:00:00Z"
    assert iso_any(date(2026, 6, 30)) == "2026-06-30"
    assert iso_any("2026-06-30") == "2026-06-30"
    assert iso_any(None) is None
    assert iso_any(3) == 3

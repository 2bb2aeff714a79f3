"""A container's update policy labels: maintenance windows, minimum image age, approval."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.update_policy import LabelError, parse_duration, parse_window, read_policy


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_window_is_open_inside_its_hours_and_names_its_next_opening_outside():
    window = parse_window("Mon-Fri 02:00-05:00")
    # 2026-12-02 is a Wednesday.
    assert window.next_opening(at("2026-12-02T03:00:00")) is None
    assert window.next_opening(at("2026-12-02T05:00:00")) == at("2026-12-03T02:00:00")
    assert window.next_opening(at("2026-12-04T06:00:00")) == at("2026-12-07T02:00:00")  # Fri


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts():
    window = parse_window("Sat 22:00-02:00 UTC")
    assert window.next_opening(at("2026-12-06T01:30:00")) is None  # Sunday morning
    assert window.next_opening(at("2026-12-06T02:00:00")) == at("2026-12-12T22:00:00")


def test_a_window_in_its_own_time_zone():
    window = parse_window("daily 02:00-03:00 Europe/Berlin")  # UTC+1 in December
    assert window.next_opening(at("2026-12-02T01:30:00")) is None
    assert window.next_opening(at("2026-12-02T02:30:00")) == at("2026-12-03T01:00:00")


def test_a_window_keeps_its_wall_clock_hours_on_daylight_saving_days():
    window = parse_window("daily 01:00-05:00 Europe/Berlin")
    # 2026-03-29: clocks go from 02:00 to 03:00 (UTC+1 to UTC+2); 05:00 local is 03:00 UTC.
    assert window.next_opening(at("2026-03-29T02:59:00")) is None
    assert window.next_opening(at("2026-03-29T03:00:00")) == at("2026-03-29T23:00:00")
    # 2026-10-25: clocks go from 03:00 back to 02:00 (UTC+2 to UTC+1); 05:00 local is 04:00 UTC.
    assert window.next_opening(at("2026-10-25T03:30:00")) is None
    assert window.next_opening(at("2026-10-25T04:00:00")) == at("2026-10-26T00:00:00")


def test_a_window_to_midnight():
    window = parse_window("Mon 22:00-24:00 UTC")  # 2026-12-07 is a Monday
    assert window.next_opening(at("2026-12-07T23:59:00")) is None
    assert window.next_opening(at("2026-12-08T00:00:00")) == at("2026-12-14T22:00:00")


def test_several_windows_open_at_the_soonest():
    window = parse_window("Sat,Sun 00:00-24:00; Mon-Fri 12:00-13:00")
    assert window.next_opening(at("2026-12-05T09:00:00")) is None  # Saturday
    assert window.next_opening(at("2026-12-02T09:00:00")) == at("2026-12-02T12:00:00")


@pytest.mark.parametrize(
    "text",
    ["", "02:00", "Someday 02:00-03:00", "25:00-26:00", "02:00-03:00 Mars/Olympus", "a b c d"],
)
def test_a_bad_window_says_what_is_expected(text):
    with pytest.raises(LabelError, match="io.podhook.window"):
        parse_window(text)


def test_durations():
    assert parse_duration("90m") == 5400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("3600") == 3600
    for bad in ("soon", "5 h", "-1", "400d"):
        with pytest.raises(LabelError, match="io.podhook.min-age"):
            parse_duration(bad)


def test_the_policy_of_a_container_from_its_labels():
    policy = read_policy(
        {
            "io.containers.autoupdate": "registry",
            "io.podhook.window": "Mon-Fri 02:00-05:00",
            "io.podhook.min-age": "24h",
            "io.podhook.approval": "required",
        }
    )
    assert policy.window is not None and policy.min_age == 86400 and policy.approval
    assert not read_policy({"io.containers.autoupdate": "registry"}).asks_anything
    with pytest.raises(LabelError, match="io.podhook.approval"):
        read_policy({"io.podhook.approval": "maybe"})

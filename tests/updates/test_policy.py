"""Maintenance windows and byte budgets: the pure cron matcher and decisions, and the updater
following them (FakeBroker, real store, an injected wall clock: nothing waits real minutes)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pytest

from edge_runtime.config import parse_config
from edge_runtime.exceptions import BadDataError, ConfigError
from edge_runtime.spec.window import Cron, Window, next_all_open, parse_window
from edge_runtime.updates.policy import Budget, Verdict, download_decision, read_nm_metered
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.traffic import Traffic, metrics_lines
from updates.conftest import DeviceFactory, FleetKeys, Releases, Repo
from updates.test_delta import desired

UTC = _dt.UTC


def at(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- cron ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "when", "match"),
    [
        ("0 2 * * *", "2026-03-04T02:00", True),
        ("0 2 * * *", "2026-03-04T02:01", False),
        ("*/15 * * * *", "2026-03-04T13:45", True),
        ("*/15 * * * *", "2026-03-04T13:46", False),
        ("0 22-23,0-5 * * 1-5", "2026-03-06T23:00", True),  # a Friday night
        ("0 22-23,0-5 * * 1-5", "2026-03-07T23:00", False),  # Saturday
        ("0 3 * * 0", "2026-03-08T03:00", True),  # Sunday as 0
        ("0 3 * * 7", "2026-03-08T03:00", True),  # and as 7
        ("0 3 1 * 1", "2026-03-01T03:00", True),  # both day fields restricted: either matches (the 1st)
        ("0 3 1 * 1", "2026-03-02T03:00", True),  # (a Monday)
        ("0 3 1 * 1", "2026-03-03T03:00", False),
        ("30 4 * 2 *", "2026-03-04T04:30", False),
        ("5/20 * * * *", "2026-03-04T04:45", True),
    ],
)
def test_cron_matches(cron: str, when: str, match: bool) -> None:
    assert Cron.parse(cron).matches(at(when)) is match


@pytest.mark.parametrize("bad", ["", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "a * * * *", "*/0 * * * *",
                                 "5-1 * * * *", "* * * * * *", "1" * 300])
def test_cron_refuses(bad: str) -> None:
    with pytest.raises(BadDataError):
        Cron.parse(bad)


def test_window_open_and_its_next_opening_with_a_time_zone() -> None:
    # 02:00 Berlin for 60 minutes: 01:00-02:00 UTC in winter (CET, UTC+1).
    w = parse_window("0 2 * * *", 60, "Europe/Berlin")
    assert w.is_open(at("2026-01-10T01:00")) and w.is_open(at("2026-01-10T01:59"))
    assert not w.is_open(at("2026-01-10T02:00")) and not w.is_open(at("2026-01-10T00:59"))
    assert next_all_open([w], at("2026-01-10T02:30")) == at("2026-01-11T01:00")
    assert next_all_open([w], at("2026-01-10T01:30")) == at("2026-01-10T01:30")


def test_two_windows_must_both_be_open() -> None:
    rollout = parse_window("0 1 * * *", 120, "UTC")  # 01:00-03:00
    local = parse_window("0 2 * * *", 120, "UTC")  # 02:00-04:00
    assert next_all_open([rollout, local], at("2026-01-10T00:00")) == at("2026-01-10T02:00")
    assert next_all_open([rollout, None], at("2026-01-10T01:30")) == at("2026-01-10T01:30")


def test_window_parse_refuses_bad_values() -> None:
    for args in (("0 2 * * *", 0, "UTC"), ("0 2 * * *", 1441, "UTC"), ("0 2 * * *", 60, "Mars/Base"), ("0 2 * *", 60, "UTC")):
        with pytest.raises(BadDataError):
            parse_window(*args)


# -- budget decisions ------------------------------------------------------------------------


def test_download_decisions() -> None:
    now = at("2026-01-10T12:00")
    assert download_decision(10, 0, Budget(), metered=False, window_open=False, now=now).verdict == Verdict.GO
    d = download_decision(600, 500, Budget(daily_budget_bytes=1000), metered=False, window_open=True, now=now)
    assert d.verdict == Verdict.BUDGET and d.until == at("2026-01-11T00:00")
    assert download_decision(500, 500, Budget(daily_budget_bytes=1000), metered=False, window_open=True,
                             now=now).verdict == Verdict.GO
    metered = Budget(metered=True, metered_max_bytes=100)
    assert download_decision(50, 0, metered, metered=True, window_open=False, now=now).verdict == Verdict.GO
    assert download_decision(500, 0, metered, metered=True, window_open=False, now=now).verdict == Verdict.METERED
    assert download_decision(500, 0, metered, metered=True, window_open=True, now=now).verdict == Verdict.GO
    assert download_decision(500, 0, metered, metered=False, window_open=False, now=now).verdict == Verdict.GO


def test_network_manager_metered_flag(tmp_path: Path) -> None:
    f = tmp_path / "metered"
    assert read_nm_metered(f) is None
    for text, want in (("yes", True), ("1", True), ("3", True), ("no (guessed)", False), ("4", False), ("0", None)):
        f.write_text(text + "\n")
        assert read_nm_metered(f) is want


def test_traffic_ledger_counts_days_and_releases(tmp_path: Path) -> None:
    t = Traffic(tmp_path / "traffic.json")
    t.add("fraud", 2, 100, at("2026-01-10T23:59"))
    t.add("fraud", 2, 50, at("2026-01-11T00:01"))
    assert t.today(at("2026-01-11T08:00")) == 50 and t.summary() == {"fraud": {"2": 150}}
    t.save()
    again = Traffic(tmp_path / "traffic.json")
    assert again.today(at("2026-01-11T09:00")) == 50 and again.releases() == {("fraud", 2): 150}
    assert 'edge_update_downloaded_bytes_total{model="fraud",version="2"} 150' in metrics_lines(again)


def test_updates_config_table() -> None:
    cfg = parse_config({"updates": {"window": "0 2 * * *", "window_minutes": 90, "daily_budget_bytes": 10, "metered": True}})
    assert cfg.updates.window_minutes == 90 and cfg.updates.metered
    with pytest.raises(ConfigError):
        parse_config({"updates": {"window": "0 25 * * *"}})
    with pytest.raises(ConfigError):
        parse_config({"updates": {"daily_budget": 10}})


# -- the updater follows them ------------------------------------------------------------------


class Wall:
    def __init__(self, when: str) -> None:
        self.now = at(when)

    def __call__(self) -> _dt.datetime:
        return self.now


WINDOW = {"cron": "0 2 * * *", "minutes": 60, "tz": "UTC"}


def test_closed_window_downloads_but_does_not_activate(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                       topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device()
    wall = Wall("2026-01-10T12:00")
    dev.updater.wall = wall
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, window=WINDOW)})
    dev.sync()
    assert dev.store.state("fraud").active == 1 and 2 in dev.store.versions("fraud"), "downloaded, not activated"
    update = dev.broker.state()["update"]
    assert update["phase"] == "waiting_window" and update["until"] == "2026-01-11T02:00:00+00:00"
    assert dev.broker.events("waiting_window")[0]["until"] == "2026-01-11T02:00:00+00:00"
    wall.now = at("2026-01-11T01:59")
    dev.sync()
    assert dev.store.state("fraud").active == 1
    wall.now = at("2026-01-11T02:10")
    dev.sync()
    assert dev.store.state("fraud").active == 2 and dev.broker.events("activated")


def test_device_window_is_honoured_without_a_rollout_window(make_device: DeviceFactory, releases: Releases,
                                                            repo: Repo, topics: Topics) -> None:
    dev = make_device(local_window=parse_window("0 2 * * *", 60, "UTC"))
    dev.updater.wall = Wall("2026-01-10T12:00")
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 1 and dev.broker.state()["update"]["phase"] == "waiting_window"


def test_daily_budget_defers_the_download_to_the_next_day(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                          topics: Topics) -> None:
    bundle = releases.bundle(2, pad=20_000)
    dev = make_device(budget=Budget(daily_budget_bytes=8_000))  # smaller than the release
    wall = Wall("2026-01-10T12:00")
    dev.updater.wall = wall
    dev.updater.traffic.add("other", 1, 5_000, wall.now)
    dev.broker.put(repo.release(bundle))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    update = dev.broker.state()["update"]
    assert update["phase"] == "deferred" and "daily budget" in update["reason"]
    assert not [t for t in dev.broker.delivered if "/chunks/" in t], "a deferred download fetched chunks"
    assert len(dev.broker.events("deferred")) == 1


def test_metered_link_waits_for_the_window_then_downloads(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                          topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device(budget=Budget(metered=True, metered_max_bytes=1_000))
    wall = Wall("2026-01-10T12:00")
    dev.updater.wall = wall
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, window=WINDOW)})
    dev.sync()
    assert dev.broker.state()["update"]["phase"] == "deferred"
    assert not [t for t in dev.broker.delivered if "/chunks/" in t]
    wall.now = at("2026-01-11T02:05")
    dev.sync()
    dev.sync()
    assert dev.store.state("fraud").active == 2
    assert dev.broker.state()["downloaded_bytes"]["fraud"]["2"] > 1_000


def test_window_round_trips_through_the_desired_state() -> None:
    w = Window(Cron.parse("0 2 * * *"), 60, "Europe/Berlin")
    assert parse_window(**{k if k != "tz" else "tz": v for k, v in w.to_json().items()}) == w


def test_metrics_expose_downloaded_bytes_per_release(tmp_path: Path) -> None:
    from edge_runtime.serving.metrics import Metrics

    traffic = Traffic(tmp_path / "traffic.json")
    traffic.add("fraud", 2, 1234, at("2026-01-10T12:00"))
    metrics = Metrics()
    metrics.update_traffic = traffic.releases
    text = metrics.exposition().decode()
    assert 'edge_update_downloaded_bytes_total{model="fraud",version="2"} 1234.0' in text


def test_publish_window_options_are_checked_before_anything_is_published() -> None:
    import argparse

    from edge_runtime.cli.fleet import _window
    from edge_runtime.exceptions import UsageError

    def ns(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"window": None, "window_minutes": None, "window_tz": "UTC", **kw})

    assert _window(ns()) is None
    w = _window(ns(window="30 1 * * 1-5", window_minutes=90, window_tz="Europe/Berlin"))
    assert w is not None and w.to_json() == {"cron": "30 1 * * 1-5", "minutes": 90, "tz": "Europe/Berlin"}
    for bad in (ns(window="0 2 * * *"), ns(window_minutes=5), ns(window="0 2 * *", window_minutes=5),
                ns(window="0 2 * * *", window_minutes=5, window_tz="Nowhere/Land")):
        with pytest.raises(UsageError):
            _window(bad)


def test_next_all_open_agrees_with_a_minute_by_minute_search() -> None:
    import itertools

    pairs = [("0 2 * * *", "30 1 * * 1-5"), ("*/20 9-17 * * *", "0 2 * * *"), ("15 3 * * 0", "0 4 * * *")]
    now = at("2026-03-27T18:07")  # DST in Europe/Berlin starts on the 29th
    for (a, b), minutes in itertools.product(pairs, (180,)):
        ws = [parse_window(a, minutes, "Europe/Berlin"), parse_window(b, 90, "UTC")]
        got = next_all_open(ws, now)
        t, want = now.replace(second=0), None
        for _ in range(9 * 24 * 60):
            t += _dt.timedelta(minutes=1)
            if all(w.is_open(t) for w in ws):
                want = t
                break
        if want is not None and want - now <= _dt.timedelta(days=8):
            assert got == want, (a, b, minutes)


def test_a_step_counts_a_device_waiting_for_its_window_as_pending(make_device: DeviceFactory, releases: Releases,
                                                                    repo: Repo, topics: Topics,
                                                                    fleet_keys: FleetKeys) -> None:
    from edge_runtime.fleet.rollout import outcome

    dev = make_device()
    wall = Wall("2026-01-10T12:00")
    dev.updater.wall = wall
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, window=WINDOW)})
    dev.sync()
    assert outcome("dev-1", dev.broker.state(), "fraud", 2, 100, "fraud-2") == "pending", "downloaded is not updated"
    wall.now = at("2026-01-11T02:01")
    dev.sync()
    assert outcome("dev-1", dev.broker.state(), "fraud", 2, 100, "fraud-2") == "updated"

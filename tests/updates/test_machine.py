"""The update machine as tables: a sequence of (event, what the driver sees) -> the effects it
must return, with no store, file or broker. Each effect is written as a short phrase
(:func:`phrase`) so a table reads like the protocol it checks."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.updates.effects import (
    Activated,
    ChunkRejected,
    ChunkWritten,
    Connected,
    DesiredReceived,
    DownloadFailed,
    DownloadOpened,
    DownloadVerified,
    Event,
    FailureRecorded,
    Installed,
    ManifestReceived,
    Now,
    Phase,
    ServingObserved,
    StaticFacts,
    SubscriptionRefused,
    Tick,
)
from edge_runtime.updates.exceptions import ImpossibleEventError
from edge_runtime.updates.policy import Budget
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelView
from updates.conftest import FleetKeys, Releases, Repo
from updates.machine_table import ACTIVE_2, T0, Table, dl, make_table


@pytest.fixture
def topics() -> Topics:
    return Topics("edge", "f1")


@pytest.fixture
def table(topics: Topics, fleet_keys: FleetKeys, tmp_path: Path) -> Table:
    return make_table(topics, fleet_keys, tmp_path)


@pytest.fixture
def manifest_v2(repo: Repo, releases: Releases) -> bytes:
    return repo.manifest(releases.bundle(2))[1]


@pytest.fixture
def installed_2(releases: Releases) -> StaticFacts:
    """v2 installed (never activated) beside the active v1."""
    with open_bundle(releases.bundle(2), None) as b:
        raw = b.manifest_bytes
    model = ModelView(active=1, highest_seen=2, installed=frozenset({1, 2}), failed=frozenset(), quarantined=frozenset())
    return StaticFacts(models={"fraud": model}, manifests={("fraud", 2): raw})


CONNECT = ["subscribe trust/root/+", "subscribe desired devices/dev-1/desired", "announce", "publish"]
NOTIFIED = ["save", "publish", "report notified fraud v2", "subscribe models/fraud/2/manifest", "publish"]
MANIFEST_OK = ["unsubscribe models/fraud/2/manifest", "open fraud v2"]


def test_a_full_update_step_by_step(table: Table, repo: Repo, manifest_v2: bytes) -> None:
    table.run([
        (Connected(False), {}, CONNECT),
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, MANIFEST_OK),
        (DownloadOpened(1), {"download": dl(0, filters=())}, ["request chunks", "report downloading fraud v2", "save traffic", "publish"]),
        (ChunkWritten(1), {"download": dl(5)}, []),  # under the next 10 %: nothing to say
        (ChunkWritten(1), {"download": dl(55)}, ["report downloading fraud v2", "save traffic", "publish"]),
        (ChunkWritten(1), {"download": dl(100, complete=True)}, [
            "report downloading fraud v2", "save traffic", "publish",
            "unsubscribe models/fraud/2/chunks/model.tflite/+", "clear filters", "save traffic", "verify"]),
        (DownloadVerified(1), {"download": dl(100, complete=True)}, ["report verified fraud v2", "install"]),
        (Installed(1), {"download": dl(100, complete=True)}, ["remove download", "report installed fraud v2", "activate fraud v2"]),
        (Activated(1, previous=1), {}, ["publish"]),
        (Tick(), {"t": 1}, []),  # the daemon has not swapped yet, the deadline is far
        (ServingObserved("fraud", serving=2), {"t": 2, "facts": ACTIVE_2}, ["report activated fraud v2", "publish"]),
    ])
    assert table.machine.job is None and table.machine.floors["desired"].seq == 1


def test_a_window_of_chunks_done_asks_for_the_next(table: Table, repo: Repo, manifest_v2: bytes) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, MANIFEST_OK),
        (DownloadOpened(1), {"download": dl(0)}, ["request chunks", "report downloading fraud v2", "save traffic", "publish"]),
        (ChunkWritten(1), {"download": dl(3, window_complete=True)}, ["request chunks again"]),
        # A failed write being handed over: the next re-plan aborts instead.
        (ChunkWritten(1), {"download": dl(4, window_complete=True, write_error="ENOSPC")}, [
            "unsubscribe models/fraud/2/chunks/model.tflite/+", "remove download", "save",
            "report rejected fraud v2", "publish", "publish"]),
    ])
    assert table.machine.job is None
    assert table.machine.last_error is not None and "ENOSPC" in table.machine.last_error["reason"]


def test_a_replayed_older_desired_state_changes_nothing(table: Table, repo: Repo) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 1}, seq=5)), {}, ["save", "publish"]),  # v1 is active: no job
        (DesiredReceived(repo.desired({"fraud": 2}, seq=3)), {}, ["save", "report rejected", "publish"]),
        (DesiredReceived(repo.desired({"fraud": 2}, seq=3)), {}, []),  # the same bytes: reported once
    ])
    assert table.machine.floors["desired"].seq == 5 and table.machine.job is None


def test_a_manifest_signed_by_a_stranger_is_refused_and_the_job_waits(
    table: Table, repo: Repo, releases: Releases, fleet_keys: FleetKeys
) -> None:
    forged = repo.manifest(releases.bundle(2), signers=[fleet_keys.stranger])[1]
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, forged), {}, ["save", "report rejected fraud v2", "publish"]),
        (ManifestReceived("fraud", 3, forged), {}, []),  # not the manifest the job waits for
    ])
    job = table.machine.job
    assert job is not None and job.phase == Phase.MANIFEST


def test_a_desired_version_below_the_floor_is_refused_once(topics: Topics, fleet_keys: FleetKeys, tmp_path: Path, repo: Repo) -> None:
    seen_3 = ModelView(active=3, highest_seen=3, installed=frozenset({3}), failed=frozenset(), quarantined=frozenset())
    table = make_table(topics, fleet_keys, tmp_path, StaticFacts(models={"fraud": seen_3}))
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, ["save", "publish", "save", "report rejected fraud v2", "publish"]),
        (Tick(), {}, []),
    ])
    assert table.machine.job is None


def test_bad_chunks_are_reported_without_a_save_and_stale_results_are_ignored(table: Table, repo: Repo, manifest_v2: bytes) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, MANIFEST_OK),
        (DownloadOpened(1), {"download": dl(0)}, ["request chunks", "report downloading fraud v2", "save traffic", "publish"]),
        (ChunkRejected(1, "sha256"), {"download": dl(0)}, ["report rejected fraud v2", "publish"]),
        (ChunkRejected(1, "sha256"), {"download": dl(0)}, ["report rejected fraud v2", "publish"]),  # counted each time
        (ChunkWritten(7), {"download": dl(50)}, []),  # for a job that is not this one
        (DownloadFailed(7, "disk full"), {"download": dl(50)}, []),
    ])
    assert table.machine.job is not None and table.machine.job.phase == Phase.DOWNLOADING


def test_a_refused_subscription_is_reported_for_the_job_at_once(table: Table, repo: Repo) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (SubscriptionRefused(("edge/f1/models/fraud/2/manifest",), "not authorized"), {}, ["save", "report rejected fraud v2", "publish"]),
        (SubscriptionRefused(("edge/f1/other",), "not authorized"), {}, ["save", "report rejected", "publish"]),
    ])


def test_a_stalled_manifest_is_asked_for_again(table: Table, repo: Repo) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (Tick(), {"t": 4}, []),
        (Tick(), {"t": 6, "connected": False}, []),  # offline: nothing to ask
        (Tick(), {"t": 6}, ["unsubscribe models/fraud/2/manifest", "subscribe models/fraud/2/manifest"]),
    ])


def test_no_confirmation_from_the_daemon_rolls_back(table: Table, repo: Repo, manifest_v2: bytes, installed_2: StaticFacts) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {"facts": installed_2}, NOTIFIED),
        # Installed before, never activated: nothing to fetch once the manifest matches.
        (ManifestReceived("fraud", 2, manifest_v2), {"facts": installed_2}, ["unsubscribe models/fraud/2/manifest", "activate fraud v2"]),
        (Activated(1, previous=1), {}, ["publish"]),
        (ServingObserved("fraud", serving=1), {"t": 10}, []),
        (Tick(), {"t": 31}, ["record failure fraud v2"]),
        (FailureRecorded(1, "no confirmation"), {}, [
            "save", "report failed fraud v2", "report rolled_back fraud v1", "publish"]),
    ])
    assert table.machine.job is None


def test_a_version_quarantined_after_the_plan_is_fetched_again_not_activated(
    table: Table, repo: Repo, manifest_v2: bytes, installed_2: StaticFacts,
) -> None:
    """Installed when the desired state came (plan: activate), quarantined by the time its manifest
    arrives (a re-verification at start-up, the CLI): the device fetches it again."""
    quarantined = dataclasses.replace(installed_2, models={"fraud": dataclasses.replace(
        installed_2.models["fraud"], quarantined=frozenset({2}))})
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {"facts": installed_2}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {"facts": quarantined}, MANIFEST_OK),
    ])


def test_in_process_activation_ends_the_job_at_once(table: Table, repo: Repo, manifest_v2: bytes, installed_2: StaticFacts) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {"facts": installed_2}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {"facts": installed_2}, ["unsubscribe models/fraud/2/manifest", "activate fraud v2"]),
        (Activated(1, previous=1), {"selftest_in_process": True, "facts": ACTIVE_2}, ["report activated fraud v2", "publish"]),
    ])
    assert table.machine.job is None


def test_a_download_over_the_daily_budget_is_deferred_until_the_next_day(
    topics: Topics, fleet_keys: FleetKeys, tmp_path: Path, repo: Repo, manifest_v2: bytes
) -> None:
    table = make_table(topics, fleet_keys, tmp_path, budget=Budget(daily_budget_bytes=10))
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, ["unsubscribe models/fraud/2/manifest", "report deferred fraud v2", "publish"]),
        (Tick(), {"t": 61}, []),  # decided again each minute: the same reason is not reported again
    ])
    job = table.machine.job
    assert job is not None and job.phase == Phase.DEFERRED and job.waiting_until == "2026-03-03T00:00:00+00:00"


def test_a_newer_desired_state_abandons_the_download(table: Table, repo: Repo, manifest_v2: bytes) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, MANIFEST_OK),
        (DownloadOpened(1), {"download": dl(0)}, ["request chunks", "report downloading fraud v2", "save traffic", "publish"]),
        (DesiredReceived(repo.desired({"fraud": 1}, seq=2)), {"download": dl(30)}, [
            "save", "publish", "unsubscribe models/fraud/2/chunks/model.tflite/+", "remove download"]),
        (ChunkWritten(1), {}, []),  # the abandoned job's chunk, handed over late
    ])
    assert table.machine.job is None


def test_a_download_that_cannot_open_is_refused(table: Table, repo: Repo, manifest_v2: bytes) -> None:
    table.run([
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED),
        (ManifestReceived("fraud", 2, manifest_v2), {}, MANIFEST_OK),
        (DownloadFailed(1, "download refused: 10 bytes free"), {}, ["save", "report rejected fraud v2", "publish", "publish"]),
        (DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, []),  # the same state again: v2 stays refused
    ])
    assert table.machine.job is None


@pytest.mark.parametrize("event", [DownloadOpened(1), Installed(1), DownloadVerified(1), FailureRecorded(1, "x")])
def test_an_outcome_nobody_asked_for_raises(table: Table, event: Event) -> None:
    with pytest.raises(ImpossibleEventError):
        table.run([(event, {}, [])])


def test_an_outcome_in_the_wrong_phase_raises(table: Table, repo: Repo) -> None:
    """The job waits for its manifest: an install or an activation failure for it is a driver bug."""
    table.run([(DesiredReceived(repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED)])
    for event in (Installed(1), DownloadOpened(1), FailureRecorded(1, "x"), DownloadVerified(2)):
        with pytest.raises(ImpossibleEventError, match="phase manifest"):
            table.machine.handle(event, table.view, Now(1000.0, T0, ""))


def test_the_machine_is_held_to_no_io_by_an_import_contract() -> None:
    """``tests/test_import_contracts.py`` runs the contracts; this one must keep covering the machine."""
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[2] / ".importlinter", encoding="utf-8")
    contract = parser["importlinter:contract:update-machine"]
    assert contract["type"] == "forbidden"
    assert set(contract["source_modules"].split()) == {
        "edge_runtime.updates.machine", "edge_runtime.updates.transfer", "edge_runtime.updates.effects"}
    forbidden = set(contract["forbidden_modules"].split())
    assert {"paho", "socket", "edge_runtime.atomic", "edge_runtime.store", "edge_runtime.updates.mqtt",
            "edge_runtime.updates.download", "edge_runtime.updates.updater"} <= forbidden

"""The device under an expired trust root (FakeBroker, real store and updater): it installs
nothing new, keeps serving and says why in ``last_error``; a rotated root that renews it is
taken even though the root that signs the rotation has expired, and the waiting desired
state then applies. Roots without ``expires`` and untrusted clocks are not affected."""

from __future__ import annotations

import datetime as _dt

from edge_runtime.trust.root import make_root, sign_root, verify_root
from edge_runtime.updates.protocol import Topics
from updates.conftest import DeviceFactory, FleetKeys, Releases, Repo

DAY = _dt.timedelta(days=1)


def _root(keys: FleetKeys, version: int, expires: _dt.datetime | None) -> bytes:
    return sign_root(make_root(version, [keys.root_key], [keys.models_key], expires=expires), [keys.root_key])


def test_an_expired_root_stops_new_updates_until_a_rotation_renews_it(
    make_device: DeviceFactory, fleet_keys: FleetKeys, releases: Releases, repo: Repo, topics: Topics
) -> None:
    now = _dt.datetime.now(_dt.UTC)
    expired = verify_root(_root(fleet_keys, 1, now - DAY))
    dev = make_device(root=expired)
    dev.updater.clock_trusted = lambda: True
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 1 and dev.store_hash() == before
    reason = dev.broker.state()["last_error"]["reason"]
    assert reason.startswith("trust root v1 expired at ") and "publish a new root" in reason
    assert not dev.broker.events("notified")

    dev.broker.put({topics.root(2): _root(fleet_keys, 2, now + 365 * DAY)})  # signed by the expired v1's key
    dev.sync()
    assert dev.broker.state()["trust_root_version"] == 2
    assert dev.broker.events("root_updated")[0]["root_version"] == 2
    assert dev.store.state("fraud").active == 2, dev.reasons()


def test_an_expired_rotation_still_leads_to_a_current_one(
    make_device: DeviceFactory, fleet_keys: FleetKeys, releases: Releases, repo: Repo, topics: Topics
) -> None:
    now = _dt.datetime.now(_dt.UTC)
    dev = make_device(root=verify_root(_root(fleet_keys, 1, now - 2 * DAY)))
    dev.updater.clock_trusted = lambda: True
    dev.broker.put({topics.root(3): _root(fleet_keys, 3, now + DAY), topics.root(2): _root(fleet_keys, 2, now - DAY)})
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.broker.state()["trust_root_version"] == 3
    assert dev.store.state("fraud").active == 2, dev.reasons()


def test_roots_without_expires_and_untrusted_clocks_are_not_checked(
    make_device: DeviceFactory, fleet_keys: FleetKeys, releases: Releases, repo: Repo, topics: Topics
) -> None:
    old_style = make_device(root=verify_root(_root(fleet_keys, 1, None)))
    old_style.updater.clock_trusted = lambda: True
    no_clock = make_device(root=verify_root(_root(fleet_keys, 1, _dt.datetime.now(_dt.UTC) - DAY)))
    for dev in (old_style, no_clock):
        dev.broker.put(repo.release(releases.bundle(2)))
        dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
        dev.sync()
        assert dev.store.state("fraud").active == 2, dev.reasons()

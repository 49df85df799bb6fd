"""Factory bundles are known by the model their verified manifest names, never by the file name
(issue 21: ``wine-1.bundle`` became a phantom model ``wine-1``), and one that fails verification
is reported as refused with its reason (it was shown as ``factory active (fallback)``)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from edge_runtime.exceptions import SignatureError
from edge_runtime.store.store import ModelStore


def test_a_factory_bundle_is_named_by_its_manifest_not_its_file(device: Any, make_bundle: Any) -> None:
    (device.factory / "fraud.bundle").unlink()
    shutil.copyfile(make_bundle(1, name="wine"), device.factory / "wine-1.bundle")
    store = device.store()
    assert store.models() == ["wine"]
    assert store.factory_bundle("wine") == device.factory / "wine-1.bundle"
    assert store.factory_bundle("wine-1") is None
    resolved = store.resolve("wine")
    assert (resolved.name, resolved.version, resolved.source) == ("wine", 1, "factory")


def test_a_factory_bundle_signed_by_an_untrusted_key_is_refused_with_its_reason(
    device: Any, make_bundle: Any
) -> None:
    shutil.copyfile(make_bundle(1, keys=[device.keys.stranger]), device.factory / "fraud.bundle")
    store = device.store()
    assert store.models() == []
    (refused,) = store.factory_refused()
    assert refused.path == device.factory / "fraud.bundle" and refused.claimed == "fraud"
    assert "is not trusted" in (refused.problem or "")
    with pytest.raises(SignatureError, match="is not trusted"):
        store.resolve("fraud")


def test_two_factory_bundles_for_one_model_refuse_the_second(device: Any, make_bundle: Any) -> None:
    shutil.copyfile(make_bundle(2), device.factory / "zz-fraud.bundle")
    store = device.store()
    assert store.factory_bundle("fraud") == device.factory / "fraud.bundle"
    (refused,) = store.factory_refused()
    assert refused.path.name == "zz-fraud.bundle" and "already provided by fraud.bundle" in (refused.problem or "")


def test_the_factory_scan_verifies_each_file_once_until_it_changes(
    device: Any, make_bundle: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.store import factory

    store: ModelStore = device.store()
    calls: list[str] = []
    real = factory.inspect
    monkeypatch.setattr(factory, "inspect", lambda p, *a: (calls.append(p.name), real(p, *a))[1])
    for _ in range(3):
        assert store.models() == ["fraud"]
    assert calls == ["fraud.bundle"]
    shutil.copyfile(make_bundle(2), device.factory / "fraud.bundle")  # replaced: verified again
    assert store.resolve("fraud").version == 2
    assert calls == ["fraud.bundle", "fraud.bundle"]

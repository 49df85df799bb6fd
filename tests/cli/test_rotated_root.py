"""A trust root rotated by the update client is the one the CLI and the daemon verify with."""

from __future__ import annotations

from typing import Any

from edge_runtime.trust.keys import generate_private_key
from edge_runtime.trust.root import make_root, sign_root, verify_root
from edge_runtime.updates.roots import root_file, save_root


def test_a_saved_rotation_lets_the_new_key_sign_and_stops_the_old_one(device: Any, make_bundle: Any) -> None:
    new_key = generate_private_key()
    # Root v2 moves both roles to the new key, signed by the old root key and the new one.
    v2 = verify_root(sign_root(make_root(2, [new_key], [new_key]), [device.keys.key, new_key]))
    save_root(device.store_path / ".updates", v2)
    assert root_file(device.store_path / ".updates", 2).is_file()

    by_new_key = make_bundle(2, keys=[new_key])
    result = device.cli("models", "install", by_new_key)
    assert result.code == 0, result.err
    assert device.store().state("fraud").active == 2

    by_old_key = make_bundle(3)
    result = device.cli("models", "install", by_old_key)
    assert result.code == 1
    assert "not trusted" in result.err or "threshold" in result.err


def test_a_tampered_saved_rotation_is_ignored(device: Any, make_bundle: Any) -> None:
    new_key = generate_private_key()
    # Signed only by the new key: does not chain from root v1, so it must not be used.
    forged = sign_root(make_root(2, [new_key], [new_key]), [new_key])
    path = root_file(device.store_path / ".updates", 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(forged)
    result = device.cli("models", "install", make_bundle(2, keys=[new_key]))
    assert result.code == 1
    assert device.store().state("fraud").active is None

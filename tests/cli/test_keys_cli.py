"""``edge-runtime keys generate|new-key|show`` and ``keys root ...``."""

from __future__ import annotations

import datetime as _dt
import stat
from pathlib import Path
from typing import Any

from edge_runtime.trust.keys import generate_private_key, key_id, load_private_key_pem
from edge_runtime.trust.pem import public_key_pem_bytes
from edge_runtime.trust.root import make_root, sign_root, verify_root


def test_generate_writes_a_0600_key_and_a_version_1_root(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "keys"
    r = cli(["keys", "generate", "--out", out])
    assert r.code == 0, r.err
    key_path, root_path = out / "signing.key", out / "root.json"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_private_key_pem(key_path.read_bytes())
    root = verify_root(root_path.read_bytes())
    assert root.version == 1
    for role in ("root", "models"):
        assert root.role(role).keyids == (key_id(key),) and root.role(role).threshold == 1
    assert f"key id {key_id(key)}" in r.out
    assert sorted(p.name for p in out.iterdir()) == ["root.json", "signing.key"]  # no temp files


def test_generate_refuses_to_overwrite_a_key_without_force(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "keys"
    assert cli(["keys", "generate", "--out", out]).code == 0
    before = (out / "signing.key").read_bytes()
    r = cli(["keys", "generate", "--out", out])
    assert r.code == 2 and r.err.strip().endswith("exists; pass --force to replace it")
    assert (out / "signing.key").read_bytes() == before
    assert cli(["keys", "generate", "--out", out, "--force"]).code == 0
    assert (out / "signing.key").read_bytes() != before
    assert stat.S_IMODE((out / "signing.key").stat().st_mode) == 0o600


def test_show_describes_a_key_and_a_root(tmp_path: Path, cli: Any, keys: Any) -> None:
    r = cli(["keys", "show", keys.key_path])
    assert r.code == 0 and f"key id: {key_id(keys.key)}" in r.out
    r = cli(["keys", "show", keys.root_path])
    assert r.code == 0
    assert "trust root version 1 (signatures verified)" in r.out
    assert "role models: threshold 1 of 1" in r.out and key_id(keys.key) in r.out


def test_show_refuses_what_is_neither(tmp_path: Path, cli: Any, keys: Any) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello")
    r = cli(["keys", "show", junk])
    assert r.code == 2 and r.err.strip() == f"edge-runtime: {junk}: neither a PEM private key nor a root.json"
    forged = tmp_path / "root.json"
    forged.write_bytes(keys.root_bytes.replace(b'"version":1', b'"version":2'))
    r = cli(["keys", "show", forged])
    assert r.code == 1 and "bad signature" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


# -- offline root keys: keys root init|add-key|retire-key|renew|sign|verify -------------


def test_generate_root_expires_in_a_year_unless_told(tmp_path: Path, cli: Any) -> None:
    assert cli(["keys", "generate", "--out", tmp_path / "a"]).code == 0
    root = verify_root((tmp_path / "a" / "root.json").read_bytes())
    assert root.expires is not None and 364 <= (root.expires - _dt.datetime.now(_dt.UTC)).days <= 365
    assert cli(["keys", "generate", "--out", tmp_path / "b", "--expires-days", "0"]).code == 0
    assert verify_root((tmp_path / "b" / "root.json").read_bytes()).expires is None


def test_root_init_writes_offline_root_keys_a_models_key_and_a_threshold_root(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "ops"
    r = cli(["keys", "root", "init", "--out", out, "--root-keys", "3", "--threshold", "2", "--expires-days", "30"])
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["models.key", "root-1.key", "root-2.key", "root-3.key", "root.json"]
    for p in out.glob("*.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    root = verify_root((out / "root.json").read_bytes())
    root_ids = {key_id(load_private_key_pem((out / f"root-{n}.key").read_bytes())) for n in (1, 2, 3)}
    models_id = key_id(load_private_key_pem((out / "models.key").read_bytes()))
    assert set(root.role("root").keyids) == root_ids and root.role("root").threshold == 2
    assert root.role("models").keyids == (models_id,) and models_id not in root_ids
    assert root.expires is not None and "role root: threshold 2 of 3" in r.out
    again = cli(["keys", "root", "init", "--out", out])
    assert again.code == 2 and "exists; pass --force" in again.err


def test_rotating_the_models_key_needs_two_of_three_root_keys(tmp_path: Path, cli: Any) -> None:
    ops = tmp_path / "ops"
    assert cli(["keys", "root", "init", "--out", ops]).code == 0
    v1_path, v2 = ops / "root.json", tmp_path / "root-v2.json"
    old_id = key_id(load_private_key_pem((ops / "models.key").read_bytes()))
    assert cli(["keys", "new-key", "--out", tmp_path / "models-b.key"]).code == 0
    new_id = key_id(load_private_key_pem((tmp_path / "models-b.key").read_bytes()))
    r = cli(["keys", "root", "add-key", v1_path, "--role", "models", "--key", tmp_path / "models-b.key", "-o", v2])
    assert r.code == 0 and "version 2 made from version 1" in r.out, r.err
    r = cli(["keys", "root", "retire-key", v2, "--role", "models", "--keyid", old_id[:10], "-o", v2])
    assert r.code == 0 and "draft version 2 edited" in r.out, r.err  # one version for both changes
    assert cli(["keys", "root", "sign", v2, "--key", ops / "root-1.key", "--previous", v1_path]).code == 0
    r = cli(["keys", "root", "verify", v2, "--previous", v1_path])
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "threshold is 2" in r.err
    r = cli(["keys", "root", "sign", v2, "--key", ops / "root-3.key", "--previous", v1_path])
    assert r.code == 0 and "fully signed" in r.out
    r = cli(["keys", "root", "verify", v2, "--previous", v1_path])
    assert r.code == 0 and "trust root version 2 verifies: chains from version 1" in r.out, r.err
    root = verify_root(v2.read_bytes())
    assert root.version == 2 and root.role("models").keyids == (new_id,)
    r = cli(["keys", "root", "sign", v2, "--key", ops / "models.key"])
    assert r.code == 1 and "is not a root key of version 2" in r.err


def test_editing_a_partly_signed_root_is_refused(tmp_path: Path, cli: Any) -> None:
    ops = tmp_path / "ops"
    assert cli(["keys", "root", "init", "--out", ops]).code == 0
    v2 = tmp_path / "v2.json"
    assert cli(["keys", "root", "renew", ops / "root.json", "-o", v2]).code == 0
    assert cli(["keys", "root", "sign", v2, "--key", ops / "root-2.key"]).code == 0
    before = v2.read_bytes()
    r = cli(["keys", "root", "add-key", v2, "--key", ops / "models.key", "-o", v2])
    assert r.code == 2 and "signed but not by a threshold" in r.err and v2.read_bytes() == before
    r = cli(["keys", "root", "retire-key", ops / "root.json", "--keyid", "0" * 12, "-o", tmp_path / "x.json"])
    assert r.code == 1 and "no key of role 'models'" in r.err


def test_verify_and_show_flag_an_expired_root(tmp_path: Path, cli: Any) -> None:
    key = generate_private_key()
    path = tmp_path / "root.json"
    path.write_bytes(sign_root(make_root(1, [key], [key], expires=_dt.datetime(2020, 1, 1, tzinfo=_dt.UTC)), [key]))
    r = cli(["keys", "root", "verify", path])
    assert r.code == 1 and r.err.strip() == (
        "edge-runtime: trust root v1 expired at 2020-01-01T00:00:00Z; publish a new root "
        "(edge-runtime keys root renew, then fleet root publish)"
    )
    r = cli(["keys", "show", path])
    assert r.code == 0 and "expires: 2020-01-01T00:00:00Z (EXPIRED" in r.out


def test_show_describes_a_draft_but_exits_1_until_it_is_fully_signed(tmp_path: Path, cli: Any) -> None:
    ops = tmp_path / "ops"
    assert cli(["keys", "root", "init", "--out", ops]).code == 0
    v2 = tmp_path / "v2.json"
    assert cli(["keys", "root", "renew", ops / "root.json", "-o", v2]).code == 0
    r = cli(["keys", "show", v2])
    assert r.code == 1 and "trust root version 2 (a draft" in r.out and "is not fully signed" in r.err
    assert cli(["keys", "root", "sign", v2, "--key", ops / "root-1.key", "--key", ops / "root-2.key"]).code == 0
    r = cli(["keys", "show", v2, "--previous", ops / "root.json"])
    assert r.code == 0 and "trust root version 2 (complete)" in r.out


def test_rotating_a_root_key_from_its_public_half(tmp_path: Path, cli: Any) -> None:
    ops = tmp_path / "ops"
    assert cli(["keys", "root", "init", "--out", ops]).code == 0
    r = cli(["keys", "new-key", "--out", tmp_path / "root-4.key"])
    public = next(line.split()[1] for line in r.out.splitlines() if line.startswith("public "))
    (tmp_path / "root-4.pub").write_text(public + "\n")
    old = key_id(load_private_key_pem((ops / "root-2.key").read_bytes()))
    v2 = tmp_path / "v2.json"
    assert cli(["keys", "root", "add-key", ops / "root.json", "--role", "root", "--key", tmp_path / "root-4.pub", "-o", v2]).code == 0
    assert cli(["keys", "root", "retire-key", v2, "--role", "root", "--keyid", old, "-o", v2]).code == 0
    assert cli(["keys", "root", "sign", v2, "--key", ops / "root-1.key", "--key", ops / "root-3.key",
                "--previous", ops / "root.json"]).code == 0
    assert cli(["keys", "root", "verify", v2, "--previous", ops / "root.json"]).code == 0
    root = verify_root(v2.read_bytes())
    new = key_id(load_private_key_pem((tmp_path / "root-4.key").read_bytes()))
    assert new in root.role("root").keyids and old not in root.role("root").keyids and root.role("root").threshold == 2
    # The retired key can no longer help sign version 3.
    v3 = tmp_path / "v3.json"
    assert cli(["keys", "root", "renew", v2, "-o", v3]).code == 0
    r = cli(["keys", "root", "sign", v3, "--key", ops / "root-2.key", "--previous", v2])
    assert r.code == 1 and "is not a root key of version 3 or version 2" in r.err


def test_root_init_takes_an_existing_models_key_by_its_public_half(tmp_path: Path, cli: Any) -> None:
    key = generate_private_key()
    (tmp_path / "models.pub").write_bytes(public_key_pem_bytes(key))
    r = cli(["keys", "root", "init", "--out", tmp_path / "ops", "--root-keys", "2", "--threshold", "2",
             "--models-key", tmp_path / "models.pub"])
    assert r.code == 0, r.err
    assert not (tmp_path / "ops" / "models.key").exists()
    root = verify_root((tmp_path / "ops" / "root.json").read_bytes())
    assert root.role("models").keyids == (key_id(key),) and root.role("root").threshold == 2
    r = cli(["keys", "root", "init", "--out", tmp_path / "bad", "--root-keys", "2", "--threshold", "3"])
    assert r.code == 2 and "--threshold 3 exceeds --root-keys 2" in r.err

"""``edge-runtime keys generate|show``."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from edge_runtime.trust.keys import key_id, load_private_key_pem
from edge_runtime.trust.root import verify_root


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

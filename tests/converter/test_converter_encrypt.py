"""``edge-convert --encrypt-to``: the bundle it writes is the encrypted one (conversion faked:
the real onnx2tf runs are in test_converter_fraud.py; this checks only the last step)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conversion_support import FACTORY_SRC

import converter.cli as convert_cli
from converter.convert import ConvertOptions, ConvertResult
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.sealed import open_sealed
from edge_runtime.trust.device_keys import device_key_id, generate_device_key, public_pem


def test_encrypt_to_writes_the_encrypted_bundle(
    make_bundle: Any, keys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = make_bundle(1)

    def fake_convert(opts: ConvertOptions, progress: Any) -> ConvertResult:
        shutil.copyfile(plain, opts.out)
        with open_bundle(plain, keys.root) as b:
            return ConvertResult(opts.out, b.manifest, "fp32", [], "", None, None)

    monkeypatch.setattr(convert_cli, "convert", fake_convert)
    pubs = tmp_path / "pubs"
    pubs.mkdir()
    devices = [generate_device_key() for _ in range(3)]
    for i, d in enumerate(devices):
        (pubs / f"pi-{i}.pub").write_bytes(public_pem(d))
    out = tmp_path / "fraud.bundle"
    code = convert_cli.main([str(FACTORY_SRC / "fraud.onnx"), "--name", "fraud", "--version", "1", "-o", str(out),
                             "--sign-key", str(keys.key_path), "--encrypt-to", str(pubs), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["encrypted_to"]) == sorted(device_key_id(d) for d in devices)
    with open_bundle(out, keys.root) as b, open_bundle(plain, keys.root) as p:
        assert b.manifest.encryption is not None
        opened = open_sealed(b.manifest, devices[2], lambda f: io.BytesIO(b.read_artifact(f)))
        assert opened.model == p.read_artifact(p.manifest.model_file)

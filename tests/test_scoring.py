"""Offline batch scoring: every input and output format agrees, files larger than a batch
stream through in batches, and bad input is refused with the row or field named (acceptance 6)."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.writer import build_manifest, hash_artifact
from edge_runtime.exceptions import InputError, UsageError
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.scoring import score_file, terminal_progress

FACTORY = Path(__file__).resolve().parents[1] / "device" / "factory"
COLUMNS = [f"f{i}" for i in range(30)]


@pytest.fixture(scope="module")
def manifest(make_bundle: Any, keys: Any) -> Manifest:
    with open_bundle(make_bundle(1), keys.root) as b:
        return b.manifest


@pytest.fixture(scope="module")
def backend(manifest: Manifest) -> Backend:
    return load_backend(manifest, FACTORY / "fraud.tflite")


class Recording(Backend):
    """A real backend wrapped to record the batch sizes it was given."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.manifest)
        self.inner = inner
        self.batches: list[int] = []

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise AssertionError("run() is delegated")

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(arrays[0]))
        return self.inner.run(arrays)


def _write_csv(path: Path, x: np.ndarray, header: bool) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(COLUMNS)
        w.writerows([[repr(float(v)) for v in row] for row in x])
    return path


def _read_scores(path: Path) -> np.ndarray:
    suffix = path.suffix
    if suffix == ".npy":
        return np.load(path)
    if suffix == ".npz":
        with np.load(path) as z:
            assert z.files == ["output_0"]
            return z["output_0"]
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows[0] == ["output_0"]
        return np.array(rows[1:], dtype=np.float32)
    return np.array([json.loads(line)["output_0"] for line in path.read_text().splitlines()], dtype=np.float32)


# -- formats (acceptance: every format in, every format out, all agree) ---------------------------


def _inputs(tmp_path: Path, x: np.ndarray) -> dict[str, Path]:
    np.save(tmp_path / "in.npy", x)
    np.savez(tmp_path / "in.npz", input_0=x)
    np.savez(tmp_path / "single.npz", whatever=x)
    _write_csv(tmp_path / "header.csv", x, header=True)
    _write_csv(tmp_path / "plain.csv", x, header=False)
    with open(tmp_path / "lists.jsonl", "w") as fh:
        fh.writelines(json.dumps([float(v) for v in row]) + "\n" for row in x)
    with open(tmp_path / "objects.jsonl", "w") as fh:
        for i, row in enumerate(x):
            fh.write(json.dumps({"input_0": [float(v) for v in row]}) + ("\n\n" if i == 5 else "\n"))
    return {p.name: p for p in tmp_path.iterdir() if p.name.split(".")[0] in ("in", "single", "header", "plain", "lists", "objects")}


def test_every_input_format_gives_the_same_scores(
    backend: Backend, holdout_x: np.ndarray, litert: Any, tmp_path: Path
) -> None:
    want = litert(FACTORY / "fraud.tflite", holdout_x)
    inputs = _inputs(tmp_path, holdout_x)
    assert len(inputs) == 7
    for name, path in sorted(inputs.items()):
        out = tmp_path / f"out-{name}.npy"
        rows = score_file(backend, path, out, batch_size=50)  # 143 rows: 3 batches
        assert rows == 143, name
        np.testing.assert_allclose(np.load(out), want, atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".npy", ".npz"])
def test_every_output_format_gives_the_same_scores(
    backend: Backend, holdout_x: np.ndarray, litert: Any, tmp_path: Path, suffix: str
) -> None:
    np.save(tmp_path / "in.npy", holdout_x)
    out = tmp_path / f"scores{suffix}"
    assert score_file(backend, tmp_path / "in.npy", out, batch_size=64) == 143
    got = _read_scores(out)
    assert got.shape == (143, 1)
    np.testing.assert_allclose(got, litert(FACTORY / "fraud.tflite", holdout_x), atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.npy", out.name])  # no temp files left


def test_csv_on_stdout_when_no_output_is_given(backend: Backend, sample_x: np.ndarray, capsys: Any, litert: Any) -> None:
    assert score_file(backend, FACTORY / "sample.csv", None) == 20
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["output_0"] and len(rows) == 21
    np.testing.assert_allclose(np.array(rows[1:], dtype=np.float32), litert(FACTORY / "fraud.tflite", sample_x), atol=1e-6)


def test_a_single_row_without_batch_dimension_is_accepted(backend: Backend, sample_x: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", sample_x[0])
    assert score_file(backend, tmp_path / "one.npy", tmp_path / "o.npy") == 1
    assert np.load(tmp_path / "o.npy").shape == (1, 1)


def test_progress_is_reported_per_batch(backend: Backend, holdout_x: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", holdout_x)
    calls: list[tuple[int, int | None]] = []
    score_file(backend, tmp_path / "in.npy", tmp_path / "o.csv", batch_size=100, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(100, 143), (143, 143)]
    stream = io.StringIO()
    show = terminal_progress(stream)
    show(50, 100)
    show(7, None)
    assert "50/100 rows" in stream.getvalue() and "\r7 rows" in stream.getvalue()


# -- streaming ----------------------------------------------------------------------------------


def test_a_large_npy_streams_through_a_memory_map_in_batches(backend: Backend, tmp_path: Path) -> None:
    rows = 40_000  # 4.8 MB of features
    x = np.random.default_rng(1).standard_normal((rows, 30)).astype(np.float32)
    np.save(tmp_path / "big.npy", x)
    del x
    rec = Recording(backend)
    tracemalloc.start()
    try:
        done = score_file(rec, tmp_path / "big.npy", tmp_path / "big-out.npy", batch_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == rows
    assert max(rec.batches) == 256 and sum(rec.batches) == rows and len(rec.batches) == -(-rows // 256)
    # The input was never loaded whole: peak Python-side allocation stays far below the file.
    assert peak < (tmp_path / "big.npy").stat().st_size / 4
    out = np.load(tmp_path / "big-out.npy", mmap_mode="r")
    assert out.shape == (rows, 1)


def test_csv_and_jsonl_stream_in_batches(backend: Backend, holdout_x: np.ndarray, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, holdout_x)
    for name in ("header.csv", "objects.jsonl"):
        rec = Recording(backend)
        score_file(rec, inputs[name], tmp_path / f"{name}.jsonl", batch_size=40)
        assert rec.batches == [40, 40, 40, 23], name


# -- bad input, in-process ------------------------------------------------------------------------


def _csv_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("short.csv", ",".join(["1"] * 30) + "\n" + ",".join(["1"] * 29) + "\n", InputError, "row 2: expected 30 values, found 29"),
        ("cell.csv", ",".join(COLUMNS) + "\n" + ",".join(["1"] * 12 + ["x7"] + ["1"] * 17) + "\n", InputError,
         r"row 2, column 'f12': 'x7' is not a number"),
        ("cell-nohead.csv", ",".join(["1"] * 3 + ["abc"] + ["1"] * 26) + "\n", InputError,
         r"row 1, column 'column 4': 'abc' is not a number"),
        ("header.csv", ",".join(COLUMNS[:29]) + "\n", InputError, "header of header.csv has 29 columns, the model expects 30"),
        ("only-header.csv", ",".join(COLUMNS) + "\n", InputError, "only-header.csv: the file holds no rows"),
        ("empty.csv", "", InputError, "empty.csv: the file is empty"),
        ("blank.jsonl", "\n\n", InputError, "blank.jsonl: the file holds no rows"),
        ("bad.jsonl", json.dumps([1.0] * 30) + "\n{oops\n", InputError, "line 2: not JSON"),
        ("width.jsonl", json.dumps([1.0] * 31) + "\n", InputError, "line 1, field 'input_0': expected 30 values, found 31"),
        ("null.jsonl", json.dumps([None] * 30) + "\n", InputError, "line 1, field 'input_0': expected .*numbers for FP32"),
        ("text.jsonl", json.dumps(["1.5"] * 30) + "\n", InputError, "line 1, field 'input_0': expected .*numbers"),
        ("field.jsonl", json.dumps({"x": [1.0] * 30}) + "\n", InputError, "line 1: field 'input_0' is missing"),
        ("table.parquet", "x", UsageError, "unsupported input format '.parquet'"),
    ],
)
def test_bad_text_input_names_the_row_or_field(
    backend: Backend, tmp_path: Path, name: str, content: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        score_file(backend, _csv_text(tmp_path / name, content), tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial output, no temp dir


def test_bad_array_input_is_refused(backend: Backend, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((5, 31), np.float32))
    with pytest.raises(InputError, match=r"wide.npy: input 'input_0' has rows of shape \[31\], the model expects \[30\]"):
        score_file(backend, tmp_path / "wide.npy", None)
    np.save(tmp_path / "words.npy", np.array([["a"] * 30]))
    with pytest.raises(InputError, match="words.npy: input 'input_0' holds <U1 data, expected numbers"):
        score_file(backend, tmp_path / "words.npy", None)
    np.save(tmp_path / "objects.npy", np.array([[object()] * 30]), allow_pickle=True)
    with pytest.raises(InputError, match="objects.npy: not a readable .npy file"):
        score_file(backend, tmp_path / "objects.npy", None)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 30)), b=np.zeros((2, 30)))
    with pytest.raises(InputError, match=r"two.npz: no array for input\(s\) \['input_0'\]; found \['a', 'b'\]"):
        score_file(backend, tmp_path / "two.npz", None)
    np.savez(tmp_path / "pickled.npz", input_0=np.array([[object()] * 30]))
    with pytest.raises(InputError, match="pickled.npz: array 'input_0' is not readable"):
        score_file(backend, tmp_path / "pickled.npz", None)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not a readable .npz file"):
        score_file(backend, tmp_path / "junk.npz", None)
    np.save(tmp_path / "ok.npy", np.zeros((2, 30), np.float32))
    with pytest.raises(UsageError, match="the output file must differ from the input file"):
        score_file(backend, tmp_path / "ok.npy", tmp_path / "ok.npy")
    with pytest.raises(UsageError, match="unsupported output format '.txt'"):
        score_file(backend, tmp_path / "ok.npy", tmp_path / "out.txt")
    with pytest.raises(UsageError, match=r"out.csv: the directory .*/none does not exist"):
        score_file(backend, tmp_path / "ok.npy", tmp_path / "none" / "out.csv")
    with pytest.raises(UsageError, match="not a file"):
        score_file(backend, tmp_path, None)


def test_a_failure_leaves_an_existing_output_file_untouched(backend: Backend, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    lines = [",".join(["0.5"] * 30)] * 300 + [",".join(["0.5"] * 29)]
    bad = _csv_text(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match="row 301: expected 30 values, found 29"):
        score_file(backend, bad, out, batch_size=100)  # three batches were already scored
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out.csv"]


# -- several inputs (a fake backend: pure logic of the readers and writers) ---------------------------


class SumBackend(Backend):
    """Two inputs a [-1, 2] and b [-1, 3]; outputs sum [-1] and both [-1, 2]."""

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        a, b = arrays
        total = a.sum(axis=1) + b.sum(axis=1)
        return [total.astype(np.float32), np.stack([a.sum(axis=1), b.sum(axis=1)], axis=1).astype(np.float32)]


def _two_input_manifest() -> Manifest:
    art = hash_artifact("model.tflite", b"x")
    return build_manifest({
        "name": "sum", "version": 1, "format": "tflite", "artifacts": {"model.tflite": art.to_json()},
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]}, {"name": "b", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [-1]}, {"name": "parts", "datatype": "FP32", "shape": [-1, 2]}],
        "compatible": {"runtime_major": 0, "architectures": ["any"]},
    })


def test_several_inputs_from_npz_and_jsonl(tmp_path: Path) -> None:
    backend = SumBackend(_two_input_manifest())
    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    b = np.ones((5, 3), np.float32)
    np.savez(tmp_path / "in.npz", a=a, b=b)
    with open(tmp_path / "in.jsonl", "w") as fh:
        for i in range(5):
            fh.write(json.dumps({"a": a[i].tolist(), "b": b[i].tolist()}) + "\n")
    for src in ("in.npz", "in.jsonl"):
        score_file(backend, tmp_path / src, tmp_path / f"{src}.npz", batch_size=2)
        with np.load(tmp_path / f"{src}.npz") as z:
            np.testing.assert_array_equal(z["sum"], a.sum(1) + 3)
            np.testing.assert_array_equal(z["parts"], np.stack([a.sum(1), b.sum(1)], 1))
    score_file(backend, tmp_path / "in.npz", tmp_path / "out.csv")
    rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert rows[0] == ["sum", "parts_0", "parts_1"] and rows[1] == ["4", "1", "3"]
    with pytest.raises(UsageError, match="the model has 2 inputs; CSV holds one"):
        score_file(backend, _csv_text(tmp_path / "x.csv", "1,2\n"), None)
    (tmp_path / "short.jsonl").write_text(json.dumps([1, 2]) + "\n")
    with pytest.raises(InputError, match=r"line 1: expected an object with keys \['a', 'b'\]"):
        score_file(backend, tmp_path / "short.jsonl", None)
    np.savez(tmp_path / "rows.npz", a=a, b=b[:4])
    with pytest.raises(InputError, match=r"rows.npz: inputs have different row counts \(5 and 4\)"):
        score_file(backend, tmp_path / "rows.npz", None)


# -- through the command (acceptance 6) -----------------------------------------------------------


@pytest.fixture(scope="module")
def scoring_device(tmp_path_factory: pytest.TempPathFactory, keys: Any, make_bundle: Any) -> dict[str, Path]:
    """A device with fraud v1 installed and active, and a directory of bad input files."""
    from edge_runtime.store.store import ModelStore

    base = tmp_path_factory.mktemp("scoring")
    store = ModelStore(base / "store", keys.root, None)
    store.install(make_bundle(1))
    store.activate("fraud", 1)
    config = base / "config.toml"
    config.write_text(f'[store]\npath = "{base / "store"}"\nfactory = "{base / "nofactory"}"\n[trust]\nroot = "{keys.root_path}"\n')
    files = base / "in"
    files.mkdir()
    good = ",".join(["0.5"] * 30)
    (files / "width.csv").write_text("\n".join([good] * 300 + [",".join(["0.5"] * 31)]) + "\n")
    (files / "cell.csv").write_text(",".join(COLUMNS) + "\n" + good + "\n" + good.replace("0.5", "n/a", 1) + "\n")
    (files / "empty.csv").write_text("")
    np.save(files / "shape.npy", np.zeros((4, 3, 10), np.float32))
    (files / "bad.jsonl").write_text(json.dumps([0.5] * 30) + "\n" + '{"input_0": [0.5, ]}\n')
    (files / "ok.csv").write_text(good + "\n")
    return {"config": config, "files": files}


@pytest.mark.parametrize(
    ("model", "name", "code", "message"),
    [
        ("fraud", "width.csv", 1, "row 301: expected 30 values, found 31"),
        ("fraud", "cell.csv", 1, "row 3, column 'f0': 'n/a' is not a number"),
        ("fraud", "empty.csv", 1, "empty.csv: the file is empty"),
        ("fraud", "shape.npy", 1, "shape.npy: input 'input_0' has rows of shape [3, 10], the model expects [30]"),
        ("fraud", "bad.jsonl", 1, "line 2: not JSON"),
        ("fraud", "missing.csv", 2, "missing.csv: no such file"),
        ("credit", "ok.csv", 1, "unknown model 'credit'; the store has ['fraud']"),
        ("fraud:7", "ok.csv", 1, "fraud v7 is not installed (installed: [1])"),
        ("fraud:x", "ok.csv", 2, "--model 'fraud:x': version must be an integer"),
    ],
)
def test_acceptance_6_bad_input_to_score(
    scoring_device: dict[str, Path], cli: Any, tmp_path: Path, model: str, name: str, code: int, message: str
) -> None:
    out = tmp_path / "scores.csv"
    r = cli(["score", "--model", model, scoring_device["files"] / name, "-o", out, "--config", scoring_device["config"]],
            real=name == "width.csv")  # one case through the console script in a subprocess
    assert r.code == code
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("edge-runtime: ") and message in r.err_lines[0]
    assert list(tmp_path.iterdir()) == []  # no partial output file, no temp directory


def test_score_usage_errors(scoring_device: dict[str, Path], cli: Any) -> None:
    r = cli(["score", scoring_device["files"] / "ok.csv", "--config", scoring_device["config"]])
    assert r.code == 2 and "the following arguments are required: --model" in r.err
    r = cli(["score", "--model", "fraud", scoring_device["files"] / "ok.csv", "--batch-size", "0",
             "--config", scoring_device["config"]])
    assert r.code == 2 and "expected an integer >= 1, found 0" in r.err
    r = cli(["score", "--model", "fraud", scoring_device["files"] / "ok.csv", "--config", scoring_device["config"]])
    assert r.code == 0 and r.out.splitlines()[0] == "output_0" and len(r.out.splitlines()) == 2


def test_progress_bar_is_drawn_only_on_a_terminal(scoring_device: dict[str, Path], tmp_path: Path, cli: Any) -> None:
    x = np.zeros((1000, 30), np.float32)
    np.save(tmp_path / "rows.npy", x)
    cmd = [str(Path(sys.executable).parent / "edge-runtime"), "score", "--model", "fraud", str(tmp_path / "rows.npy"),
           "-o", str(tmp_path / "out.npy"), "--batch-size", "100", "--config", str(scoring_device["config"])]
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(cmd, stderr=slave, stdout=subprocess.PIPE, timeout=120, check=False)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    tty_err = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "\r[###" in tty_err and "1000/1000 rows" in tty_err and "rows/s" in tty_err
    r = cli(["score", "--model", "fraud", tmp_path / "rows.npy", "-o", tmp_path / "out2.npy", "--batch-size", "100",
             "--config", scoring_device["config"]])
    assert r.code == 0 and "rows/s" not in r.err and r.err_lines == [f"scored 1000 rows with fraud v1 (store) to {tmp_path / 'out2.npy'}"]


class StaticBatchBackend(SumBackend):
    """A model exported with a batch of 1: ``Backend.run`` refuses any other batch (spec.check)."""

    calls = 0

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        StaticBatchBackend.calls += 1
        (x,) = arrays
        return [np.stack([x.sum(axis=1), x.max(axis=1)], axis=1).astype(np.float32)]


def test_a_static_batch_model_scores_a_file_one_row_at_a_time(tmp_path: Path) -> None:
    art = hash_artifact("model.tflite", b"x")
    manifest = build_manifest({
        "name": "cnn", "version": 1, "format": "tflite", "artifacts": {"model.tflite": art.to_json()},
        "inputs": [{"name": "data_0", "datatype": "FP32", "shape": [1, 3]}],
        "outputs": [{"name": "prob", "datatype": "FP32", "shape": [1, 2]}],
        "compatible": {"runtime_major": 0, "architectures": ["any"]},
    })
    backend = StaticBatchBackend(manifest)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    with pytest.raises(InputError, match=r"expected shape \[1, 3\], found \[8, 3\]"):
        backend.run([x])  # what the scorer used to hand it
    np.save(tmp_path / "rows.npy", x)
    StaticBatchBackend.calls = 0
    assert score_file(backend, tmp_path / "rows.npy", tmp_path / "out.npy", batch_size=5) == 8
    assert StaticBatchBackend.calls == 8
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack([x.sum(1), x.max(1)], 1))

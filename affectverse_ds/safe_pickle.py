"""Restricted unpickling for the benchmark label files.

MER-UniBench ships its labels as ``.npz`` archives whose members are pickled
Python dicts. Pickle runs arbitrary code, so these files are read with an
unpickler that resolves only the handful of globals numpy needs to rebuild
arrays and scalars; anything else (``os.system``, ``builtins.eval`` ...) is
refused with :class:`UnsafePickleError`.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from affectverse_ds.bounded import open_regular, read_zip_member

# the largest label member MER-UniBench ships is under 2 MB; an archive member that inflates past this is an
# attack (a 4 GB zero-filled member compresses to 4 MB), refused before it is inflated
MAX_NPZ_MEMBER = 64 << 20

# (module, name) pairs a label pickle may reference. numpy moved ``core`` to
# ``_core`` in 2.0; pickles written by either version name one or the other.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}")
        return super().find_class(module, name)


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers, strings, numbers and numpy arrays."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _load_npy_member(raw: bytes) -> Any:
    """Parse one ``.npy`` member; object arrays are unpickled with the restricted unpickler."""
    fp = io.BytesIO(raw)
    major, _minor = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fp)
    if dtype.hasobject:
        obj = safe_loads(fp.read())
        return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    count = int(np.prod(shape)) if shape else 1
    arr = np.frombuffer(fp.read(count * dtype.itemsize), dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def load_npz(path: str | Path) -> dict[str, Any]:
    """Load every member of an ``.npz`` archive; pickled members go through the restricted unpickler.

    Returns a dict member-name (without ``.npy``) -> value; 0-d object arrays are
    unwrapped to the object they hold (the label dicts).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    out: dict[str, Any] = {}
    with open_regular(path) as f:  # a FIFO is refused, not waited on
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{path}: not an .npz archive ({err})") from None
        with zf:
            for member in zf.namelist():
                key = member[:-4] if member.endswith(".npy") else member
                try:
                    out[key] = _load_npy_member(read_zip_member(zf, member, MAX_NPZ_MEMBER, path))
                except UnsafePickleError as err:  # the same class, naming the file and member (one line)
                    raise UnsafePickleError(f"{path}: member {member}: {err}") from None
                except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                    raise ValueError(f"{path}: member {member} is not a readable array ({first})") from None
    return out

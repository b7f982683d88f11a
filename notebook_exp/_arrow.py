"""Building pyarrow arrays from numpy buffers without ``pa.array``.

``pa.array`` (and ``DictionaryArray.from_arrays``) probe their input for pandas
types and so import pandas: seconds of CPU on the first flush, taken from the
training loop. These helpers wrap buffers directly, zero-copy where possible.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def column(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A fixed-width array over a numpy array (no nulls)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def strings(items: list[str]) -> pa.Array:
    """A string array of ``items`` (no nulls)."""
    data = [item.encode("utf-8") for item in items]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )


def dictionary(codes: np.ndarray, names: list[str]) -> pa.Array:
    """A dictionary-encoded string array: ``names[codes[i]]``."""
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    return pa.DictionaryArray.from_buffers(
        pa.dictionary(pa.int32(), pa.string()), len(codes), [None, pa.py_buffer(codes)], strings(names)
    )

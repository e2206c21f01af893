"""LeRobotDataset v3.0 on disk: paths, default features, feature validation and the Arrow types of the
``data/`` parquet columns (what Hugging Face ``datasets`` writes for LeRobot's features).

    meta/info.json                    codebase_version "v3.0", fps, features, totals, path templates
    meta/stats.json                   data-set statistics per feature
    meta/tasks.parquet                task strings (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, data/video file and
                                      span, per-episode statistics
    data/chunk-000/file-000.parquet   one row per frame, many episodes per file
    videos/<key>/chunk-000/file-000.mp4        camera frames, many episodes per file
"""

from __future__ import annotations

import json

import numpy as np

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200

DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": (1,), "names": None},
    "frame_index": {"dtype": "int64", "shape": (1,), "names": None},
    "episode_index": {"dtype": "int64", "shape": (1,), "names": None},
    "index": {"dtype": "int64", "shape": (1,), "names": None},
    "task_index": {"dtype": "int64", "shape": (1,), "names": None},
}
VISUAL = ("video", "image")


class DatasetError(ValueError):
    """A LeRobot data set, or a frame given to one, does not match its description."""


def next_file(chunk: int, file: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    """LeRobot's ``update_chunk_file_indices``."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def feature(dtype: str, shape: tuple, names=None) -> dict:
    return {"dtype": dtype, "shape": tuple(int(s) for s in shape), "names": names}


def check_features(features: dict) -> dict:
    """User features (without the defaults) with shapes as tuples; raises DatasetError naming the bad one."""
    out = {}
    for key, ft in features.items():
        if "/" in key:
            raise DatasetError(f"feature {key!r}: names must not contain '/'")
        if key in DEFAULT_FEATURES:
            raise DatasetError(f"feature {key!r} is written by the data set itself; leave it out")
        try:
            dtype, shape = ft["dtype"], tuple(int(s) for s in ft["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"feature {key!r}: expected {{'dtype', 'shape', 'names'}}, got {ft!r}") from e
        if not shape or any(s < 1 for s in shape):
            raise DatasetError(f"feature {key!r}: shape {shape} must be non-empty with sizes >= 1")
        if dtype in VISUAL:
            if len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"feature {key!r}: a camera is (height, width, 3), got {shape}")
        elif dtype != "string":
            try:
                np.dtype(dtype)
            except TypeError as e:
                raise DatasetError(f"feature {key!r}: unknown dtype {dtype!r}") from e
            if len(shape) > 5:
                raise DatasetError(f"feature {key!r}: at most 5 dimensions, got {shape}")
        out[key] = {**ft, "shape": shape, "names": ft.get("names")}
    return out


_ARRAY_TYPES = {2: "Array2D", 3: "Array3D", 4: "Array4D", 5: "Array5D"}


def hf_feature(ft: dict) -> dict:
    """The ``datasets`` feature description (schema metadata ``huggingface``) of a non-video feature."""
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if shape == (1,):
        return {"dtype": dtype, "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}
    return {"shape": list(shape), "dtype": dtype, "_type": _ARRAY_TYPES[len(shape)]}


def arrow_field(key: str, ft: dict):
    """The Arrow field ``datasets`` writes for a LeRobot feature: a value for shape (1,), a fixed-size
    list for (D,), nested lists tagged with the ``datasets`` ArrayND extension for 2-D and up."""
    import pyarrow as pa

    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return pa.field(key, pa.struct({"bytes": pa.binary(), "path": pa.string()}))
    base = pa.string() if dtype == "string" else pa.from_numpy_dtype(np.dtype(dtype))
    if shape == (1,):
        return pa.field(key, base)
    if len(shape) == 1:
        return pa.field(key, pa.list_(base, shape[0]))
    t = base
    for _ in shape:
        t = pa.list_(t)
    name = f"datasets.features.features.{_ARRAY_TYPES[len(shape)]}ExtensionType"
    meta = {"ARROW:extension:name": name, "ARROW:extension:metadata": json.dumps([list(shape), dtype])}
    return pa.field(key, t, metadata=meta)


def arrow_schema(features: dict):
    """Schema of the ``data/`` files: every non-video feature, in the order of ``features``."""
    import pyarrow as pa

    cols = {k: ft for k, ft in features.items() if ft["dtype"] != "video"}
    hf = {"info": {"features": {k: hf_feature(ft) for k, ft in cols.items()}}}
    return pa.schema([arrow_field(k, ft) for k, ft in cols.items()],
                     metadata={"huggingface": json.dumps(hf)})


def arrow_column(values, ft: dict, field):
    """An Arrow array of ``field``'s type from per-episode values (T, *shape) (or a list of str)."""
    import pyarrow as pa

    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "string":
        return pa.array([str(v) for v in values], pa.string())
    v = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype)))
    t = v.shape[0]
    if shape == (1,):
        return pa.array(v.reshape(t), field.type)
    flat = pa.array(v.reshape(-1))
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, shape[0])
    arr = flat
    n = v.size
    for size in reversed(shape):
        n //= size
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, n * size + 1, size, dtype=np.int32)), arr)
    return arr


def column_numpy(col, shape: tuple, dtype: str) -> np.ndarray:
    """A parquet column back to (T,) for shape (1,), else (T, *shape)."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = len(col)
    if dtype == "string":
        return np.asarray(col.to_pylist(), dtype=object)
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    out = col.to_numpy(zero_copy_only=False)
    want = (t,) if tuple(shape) == (1,) else (t, *shape)
    if out.size != int(np.prod(want)):
        raise DatasetError(f"column of {t} rows holds {out.size} values, not {want}")
    return out.reshape(want).astype(np.dtype(dtype), copy=False)


def json_features(features: dict) -> dict:
    """Features as ``meta/info.json`` stores them (shapes as lists)."""
    return {k: {**ft, "shape": list(ft["shape"])} for k, ft in features.items()}

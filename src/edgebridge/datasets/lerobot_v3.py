"""LeRobotDataset v3.0 writer and reader: numpy + pyarrow (parquet) + PyAV (video), no torch.

Files and fields follow LeRobot's ``LeRobotDataset`` v3.0 (``docs/datasets.md``): many episodes per
data and video file, ``meta/episodes`` with each episode's frame range, file indices, video time span and
statistics; ``LeRobotDataset(repo_id, root=DIR)`` of the ``lerobot-dataset`` package opens what
:class:`LeRobotWriter` writes (``tests/lerobot_format/test_lerobot_library.py`` checks that).

    with LeRobotWriter(root, fps=10, features=feats, robot_type="panda") as w:
        for obs in episode:
            w.add_frame({"observation.state": state, "action": action, "observation.images.front": rgb})
        w.save_episode(task="put the cup in the tray")

    ds = LeRobotReader(root)
    ep = ds.episode(0)                  # {feature: (T, *shape) array}, strings as object arrays
    rgb = ds.frames(0, "observation.images.front")   # (T, H, W, 3) uint8

``timestamp`` is ``frame_index / fps`` (LeRobot's convention, which its video lookup relies on).
Camera frames are encoded as they arrive; an episode dropped with :meth:`LeRobotWriter.clear_episode`
leaves its frames in the video file, unreferenced. Parquet and MP4 files are complete only after
:meth:`LeRobotWriter.finalize` (the context manager calls it, also on error).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from . import stats as st
from .layout import (CHUNKS_SIZE, CODEBASE_VERSION, DATA_FILE_MB, DATA_PATH, DEFAULT_FEATURES, EPISODES_PATH,
                     INFO_PATH, STATS_PATH, TASKS_PATH, VIDEO_FILE_MB, VIDEO_PATH, DatasetError, arrow_column,
                     arrow_schema, check_features, column_numpy, json_features, next_file)
from .video import DEFAULT_VCODEC, VideoWriter, read_frames, video_info

log = logging.getLogger(__name__)

IMAGE_STATS_KEEP = 512  # frames per camera and episode kept (thinned evenly) for the image statistics

def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("LeRobot data sets need pyarrow: pip install 'edgebridge[dataset]'") from e
    return pa, pq


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def write_tasks(path: Path, tasks: list[str]) -> None:
    """``meta/tasks.parquet`` as pandas writes LeRobot's task table: the task strings are the index."""
    pa, pq = _pa()
    table = pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)),
                      "__index_level_0__": pa.array(tasks, pa.string())})
    pandas_meta = {"index_columns": ["__index_level_0__"],
                   "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                       "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


class LeRobotWriter:
    """Write a new LeRobotDataset v3.0 under ``root`` (which must not exist or be empty).

    ``features``: {key: {"dtype", "shape", "names"}} without LeRobot's defaults (index, timestamp...);
    camera keys have dtype ``"video"`` and shape (height, width, 3). ``fps``: frames per second of the
    recording. ``vcodec``: ``libsvtav1`` (LeRobot's default), ``h264`` or ``hevc``."""

    def __init__(self, root: str | Path, fps: float, features: dict, robot_type: str | None = None, *,
                 vcodec: str = DEFAULT_VCODEC, chunks_size: int = CHUNKS_SIZE,
                 data_files_size_in_mb: float = DATA_FILE_MB, video_files_size_in_mb: float = VIDEO_FILE_MB) -> None:
        pa, pq = _pa()
        if not (float(fps) > 0):
            raise DatasetError(f"fps: expected > 0, got {fps!r}")
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root}: not empty; a new LeRobot data set needs an empty directory")
        user = check_features(features)
        if any(ft["dtype"] == "image" for ft in user.values()):
            raise DatasetError("image features (PNG in parquet) are not written here; use dtype 'video'")
        self.features = {**user, **DEFAULT_FEATURES}
        self.fps = int(fps) if float(fps).is_integer() else float(fps)
        self.vcodec = vcodec
        self.video_keys = [k for k, ft in user.items() if ft["dtype"] == "video"]
        self.info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0,
                     "total_frames": 0, "total_tasks": 0, "chunks_size": int(chunks_size),
                     "data_files_size_in_mb": data_files_size_in_mb, "video_files_size_in_mb": video_files_size_in_mb,
                     "fps": self.fps, "splits": {}, "data_path": DATA_PATH,
                     "video_path": VIDEO_PATH if self.video_keys else None, "features": json_features(self.features)}
        self.schema = arrow_schema(self.features)
        self.tasks: list[str] = []
        self.episodes: list[dict] = []
        self.episode_stats: list[dict] = []
        self._buf: dict[str, list] = {}
        self._buf_tasks: list[str | None] = []
        self._data = None  # open parquet writer
        self._data_file = (0, 0)
        self._videos: dict[str, VideoWriter] = {}
        self._video_file = {k: (0, 0) for k in self.video_keys}
        self._video_used = {k: 0 for k in self.video_keys}  # frames referenced by saved episodes, per open file
        self._images: dict[str, list] = {}
        self._img_stride = 1
        self.closed = False
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / INFO_PATH, self.info)

    # ------------------------------------------------------------------ frames
    @property
    def frames_in_episode(self) -> int:
        return len(self._buf_tasks)

    def add_frame(self, frame: dict) -> None:
        """One frame: every feature of the data set (camera keys: (H, W, 3) uint8 RGB), and optionally
        ``"task"`` (else the task given to :meth:`save_episode`)."""
        if self.closed:
            raise DatasetError(f"{self.root}: finalized; no more frames")
        frame = dict(frame)
        task = frame.pop("task", None)
        want = set(self.features) - set(DEFAULT_FEATURES)
        if set(frame) != want:
            raise DatasetError(f"frame features differ from the data set's: missing {sorted(want - set(frame))}, "
                               f"extra {sorted(set(frame) - want)}")
        checked = {k: self._check_value(k, v) for k, v in frame.items()}
        n = self.frames_in_episode
        for key in self.video_keys:
            self._video(key).add(checked[key])
            if n % self._img_stride == 0:  # a thinned copy for the statistics (at most IMAGE_STATS_KEEP frames)
                img = checked[key]
                self._images.setdefault(key, []).append(img[::4, ::4] if max(img.shape[:2]) >= 300 else img)
        if self._images and len(next(iter(self._images.values()))) > IMAGE_STATS_KEEP:
            self._images = {k: v[::2] for k, v in self._images.items()}
            self._img_stride *= 2
        for k, v in checked.items():
            if k not in self.video_keys:
                self._buf.setdefault(k, []).append(v)
        self._buf_tasks.append(task)

    def _check_value(self, key: str, value):
        ft = self.features[key]
        if ft["dtype"] == "string":
            if not isinstance(value, str):
                raise DatasetError(f"feature {key!r}: expected str, got {type(value).__name__}")
            return value
        arr = np.asarray(value)
        if ft["dtype"] == "video":
            if arr.shape != ft["shape"] or arr.dtype != np.uint8:
                raise DatasetError(f"feature {key!r}: expected {ft['shape']} uint8 RGB, got {arr.shape} {arr.dtype}")
            return arr
        if arr.shape != ft["shape"] and not (ft["shape"] == (1,) and arr.shape == ()):
            raise DatasetError(f"feature {key!r}: shape {arr.shape}, expected {ft['shape']}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise DatasetError(f"feature {key!r}: non-finite values")
        return arr.astype(ft["dtype"], copy=False).reshape(ft["shape"])

    def _video(self, key: str) -> VideoWriter:
        w = self._videos.get(key)
        if w is None:
            h, wd, _ = self.features[key]["shape"]
            c, f = self._video_file[key]
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
            w = self._videos[key] = VideoWriter(path, self.fps, wd, h, vcodec=self.vcodec)
        return w

    def clear_episode(self) -> None:
        """Drop the frames added since the last saved episode (their video frames stay, unreferenced)."""
        self._buf, self._buf_tasks, self._images, self._img_stride = {}, [], {}, 1

    # ------------------------------------------------------------------ episodes
    def save_episode(self, task: str | None = None) -> int:
        """Write the frames added since the last episode as one episode; returns its index."""
        pa, pq = _pa()
        n = self.frames_in_episode
        if n == 0:
            raise DatasetError(f"{self.root}: no frames added since the last episode; add_frame() first")
        tasks = [t if t is not None else task for t in self._buf_tasks]
        if any(t is None for t in tasks):
            raise DatasetError("save_episode: frames without a task; pass task= or a 'task' in each frame")
        for t in tasks:
            if t not in self.tasks:
                self.tasks.append(t)
        ep = len(self.episodes)
        start = self.info["total_frames"]
        cols = {k: np.stack(v) if self.features[k]["dtype"] != "string" else v for k, v in self._buf.items()}
        cols.update({"timestamp": (np.arange(n) / self.fps).astype(np.float32),
                     "frame_index": np.arange(n, dtype=np.int64), "episode_index": np.full(n, ep, dtype=np.int64),
                     "index": np.arange(start, start + n, dtype=np.int64),
                     "task_index": np.array([self.tasks.index(t) for t in tasks], dtype=np.int64)})
        ep_stats = {k: st.feature_stats(v) for k, v in cols.items() if self.features[k]["dtype"] != "string"}
        for key in self.video_keys:
            ep_stats[key] = st.image_stats(np.stack(self._images[key]))
        meta = {"episode_index": ep, "tasks": sorted(set(tasks), key=tasks.index), "length": n}
        meta.update(self._write_data(cols, start, n))
        for key in self.video_keys:
            meta.update(self._episode_video(key, n))
        meta.update({f"stats/{k}/{s}": np.asarray(v).tolist() for k, d in ep_stats.items() for s, v in d.items()})
        meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episodes.append(meta)
        self.episode_stats.append(ep_stats)
        self.info["total_episodes"] = len(self.episodes)
        self.info["total_frames"] = start + n
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{len(self.episodes)}"}
        self.clear_episode()
        self._write_meta()
        return ep

    def _write_data(self, cols: dict, start: int, n: int) -> dict:
        pa, pq = _pa()
        c, f = self._data_file
        if self._data is not None and self._data_path.stat().st_size / 2**20 >= self.info["data_files_size_in_mb"]:
            self._data.close()
            self._data = None
            c, f = self._data_file = next_file(c, f, self.info["chunks_size"])
        if self._data is None:
            self._data_path = self.root / DATA_PATH.format(chunk_index=c, file_index=f)
            self._data_path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(self._data_path, self.schema, compression="snappy", use_dictionary=True)
        arrays = [arrow_column(cols[fd.name], self.features[fd.name], fd) for fd in self.schema]
        self._data.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        return {"data/chunk_index": c, "data/file_index": f, "dataset_from_index": start, "dataset_to_index": start + n}

    def _episode_video(self, key: str, n: int) -> dict:
        w = self._videos[key]
        c, f = self._video_file[key]
        frm = (w.frames - n) / self.fps
        out = {f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
               f"videos/{key}/from_timestamp": float(frm), f"videos/{key}/to_timestamp": float(w.frames / self.fps)}
        if w.bytes / 2**20 >= self.info["video_files_size_in_mb"]:  # the next episode starts a new file
            w.close()
            del self._videos[key]
            self._video_file[key] = next_file(c, f, self.info["chunks_size"])
        return out

    def _write_meta(self) -> None:
        pa, pq = _pa()
        write_tasks(self.root / TASKS_PATH, self.tasks)
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), path, compression="snappy")
        write_json(self.root / STATS_PATH, st.to_json(st.aggregate(self.episode_stats)))
        write_json(self.root / INFO_PATH, self.info)

    def finalize(self) -> None:
        """Close the data and video files and write the video info; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._data is not None:
            self._data.close()
            self._data = None
        for w in self._videos.values():
            w.close()
        self._videos = {}
        for key in self.video_keys:
            first = self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            if first.exists():
                self.info["features"][key]["info"] = video_info(first)
        if self.episodes:
            self._write_meta()
        else:
            write_json(self.root / INFO_PATH, self.info)

    def __enter__(self) -> "LeRobotWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self.frames_in_episode:
            log.warning("%s: %d frames of an unsaved episode dropped", self.root, self.frames_in_episode)
            self.clear_episode()
        self.finalize()


class LeRobotReader:
    """Read a LeRobotDataset v3.x from ``root`` as numpy arrays (no torch, no ``datasets``)."""

    def __init__(self, root: str | Path) -> None:
        pa, pq = _pa()
        self.root = Path(root)
        try:
            self.info = json.loads((self.root / INFO_PATH).read_text())
        except FileNotFoundError as e:
            raise DatasetError(f"{self.root}: no {INFO_PATH}; not a LeRobot data set") from e
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.root / INFO_PATH}: not valid JSON ({e})") from e
        version = str(self.info.get("codebase_version", "?"))
        if not version.startswith("v3."):
            raise DatasetError(f"{self.root}: LeRobotDataset {version}; only v3.x is read (convert older ones with "
                               "lerobot's convert_dataset_v21_to_v30)")
        self.features = {k: {**ft, "shape": tuple(ft["shape"])} for k, ft in self.info["features"].items()}
        self.fps = self.info["fps"]
        tasks = pq.read_table(self.root / TASKS_PATH)
        names = [c for c in tasks.column_names if c != "task_index"]
        if "task" in names:  # written by other tools with a named index
            names = ["task"]
        order = np.argsort(tasks.column("task_index").to_numpy())
        self.tasks = [tasks.column(names[0]).to_pylist()[i] for i in order] if names else []
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{self.root}: no meta/episodes/*/*.parquet")
        eps = [pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")])
               for f in files]
        rows = pa.concat_tables(eps, promote_options="default").to_pylist()
        self.episodes = sorted(rows, key=lambda r: r["episode_index"])
        self._cache: tuple[Path, object] | None = None

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    def stats(self) -> dict:
        path = self.root / STATS_PATH
        return st.from_json(json.loads(path.read_text())) if path.exists() else {}

    def _table(self, ep: dict):
        pa, pq = _pa()
        path = self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                          file_index=ep["data/file_index"])
        if self._cache is None or self._cache[0] != path:
            try:
                self._cache = (path, pq.read_table(path))
            except OSError as e:
                raise DatasetError(f"{path}: cannot read ({e}); was the writer finalized?") from e
        return self._cache[1]

    def episode(self, i: int, keys: list[str] | None = None) -> dict:
        """Frames of episode ``i``: {feature: (T,) for shape (1,) else (T, *shape)} (strings as object
        arrays), plus ``task`` (the task string of each frame). Camera keys are not decoded here
        (:meth:`frames`)."""
        import pyarrow.compute as pc

        ep = self.episodes[i]
        table = self._table(ep)
        idx = table.column("index")
        mask = pc.and_(pc.greater_equal(idx, ep["dataset_from_index"]), pc.less(idx, ep["dataset_to_index"]))
        rows = table.filter(mask)
        keys = [k for k in (keys or self.features) if self.features[k]["dtype"] not in ("video", "image")]
        out = {}
        for k in keys:
            if k not in rows.column_names:
                raise DatasetError(f"{self.root}: feature {k!r} has no column in the data files")
            out[k] = column_numpy(rows.column(k), self.features[k]["shape"], self.features[k]["dtype"])
        ti = column_numpy(rows.column("task_index"), (1,), "int64")
        out["task"] = np.asarray([self.tasks[j] for j in ti], dtype=object)
        if len(ti) != ep["length"]:
            raise DatasetError(f"{self.root}: episode {i} has {len(ti)} rows, its metadata says {ep['length']}")
        return out

    def frames(self, i: int, key: str) -> np.ndarray:
        """Camera ``key`` of episode ``i``: (T, H, W, 3) uint8 RGB."""
        ep = self.episodes[i]
        ft = self.features.get(key)
        if ft is None or ft["dtype"] not in ("video", "image"):
            raise DatasetError(f"{self.root}: {key!r} is not a camera feature; cameras: {self.video_keys}")
        if ft["dtype"] == "image":
            return _decode_images(self._table(ep), ep, key)
        path = self.root / self.info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                                           file_index=ep[f"videos/{key}/file_index"])
        rgb = read_frames(path, ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"], self.fps)
        if len(rgb) != ep["length"]:
            raise DatasetError(f"{path}: {len(rgb)} frames for episode {i}, expected {ep['length']}")
        return rgb


def _decode_images(table, ep: dict, key: str) -> np.ndarray:
    import io

    import pyarrow.compute as pc
    from PIL import Image

    idx = table.column("index")
    rows = table.filter(pc.and_(pc.greater_equal(idx, ep["dataset_from_index"]), pc.less(idx, ep["dataset_to_index"])))
    return np.stack([np.asarray(Image.open(io.BytesIO(v["bytes"])).convert("RGB")) for v in rows.column(key).to_pylist()])


def remove_dataset(root: str | Path) -> None:
    """Delete a LeRobot data set directory (refuses a directory that does not hold one)."""
    root = Path(root)
    if not (root / INFO_PATH).exists():
        raise DatasetError(f"{root}: no {INFO_PATH}; not removing a directory that is not a LeRobot data set")
    shutil.rmtree(root)

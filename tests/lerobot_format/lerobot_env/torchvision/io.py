"""``VideoReader`` on PyAV, as torchvision's pyav backend behaved (see the package docstring)."""

import av
import torch


class VideoReader:
    def __init__(self, path: str, stream: str = "video") -> None:
        self.container = av.open(str(path))
        self._stream = self.container.streams.video[0]
        self._iter = None

    def seek(self, time_s: float, keyframes_only: bool = True) -> "VideoReader":
        s = self._stream
        self.container.seek(int(time_s / s.time_base), stream=s, backward=True, any_frame=not keyframes_only)
        self._iter = None
        return self

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = self.container.decode(self._stream)
        frame = next(self._iter)
        data = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
        return {"data": data, "pts": float(frame.pts * self._stream.time_base)}

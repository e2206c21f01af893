"""``ToTensor``: PIL image or HWC uint8 array -> CHW float tensor in [0, 1] (see the package docstring)."""

import numpy as np
import torch


class ToTensor:
    def __call__(self, pic):
        arr = np.asarray(pic)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()

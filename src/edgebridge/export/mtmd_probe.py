"""What llama.cpp's multimodal library (mtmd) makes of an image: the projector's output embeddings for a
PNG, read through llama-cpp-python's ctypes bindings. The export's parity check holds these against
torch's; a test uses a probe projector that passes pixels through to hold llama.cpp's preprocessing
against the trainer's."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..errors import EdgebridgeError, require


class MtmdError(EdgebridgeError):
    """llama.cpp could not load the projector or encode the image."""


def image_embeddings(model_path: str | Path, mmproj_path: str | Path, png: bytes, *, n_threads: int = 2) -> np.ndarray:
    """(n_image_tokens, n_embd) float32: the embeddings llama.cpp feeds the language model for ``png``."""
    lc = require("llama_cpp", "vlm", "the llama.cpp image-embedding probe")
    import llama_cpp.mtmd_cpp as mtmd

    llm = lc.Llama(model_path=str(model_path), n_ctx=1024, n_threads=n_threads, verbose=False)
    ctx = None
    bitmap = None
    chunks = None
    try:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llm.model, params)
        if not ctx:
            raise MtmdError(f"llama.cpp could not load the vision projector {mmproj_path}")
        buf = (ctypes.c_uint8 * len(png)).from_buffer(bytearray(png))
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(png), False)
        if not bitmap:
            raise MtmdError("llama.cpp could not decode the image")
        text = mtmd.mtmd_input_text()
        marker = mtmd.mtmd_default_marker()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        chunks = mtmd.mtmd_input_chunks_init()
        arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), arr, 1) != 0:
            raise MtmdError("mtmd_tokenize failed")
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                raise MtmdError("mtmd_encode_chunk failed")
            ptr = mtmd.mtmd_get_output_embd(ctx)
            d = llm.n_embd()
            return np.ctypeslib.as_array(ptr, shape=(n * d,)).reshape(n, d).copy()
        raise MtmdError("the tokenised input held no image chunk")
    finally:
        if chunks:
            mtmd.mtmd_input_chunks_free(chunks)
        if bitmap:
            mtmd.mtmd_bitmap_free(bitmap)
        if ctx:
            mtmd.mtmd_free(ctx)
        llm.close()

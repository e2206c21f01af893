"""Remote planner: the same request sent to an OpenAI-compatible chat-completions server.

Works with llama-cpp-python's server and llama.cpp's ``llama-server`` (``constraint = "grammar"``:
the bounded GBNF grammar goes in the request body), and with vLLM or Ollama (``constraint =
"json_schema"``: ``response_format`` with the plan schema). Standard library only (urllib): timeouts,
retries with exponential backoff on connection errors, timeouts, HTTP 429 and 5xx. A garbage answer
(non-JSON body, no choices, an answer that is not a valid plan) is a :class:`PlanError` at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ...config import check
from ...contracts import RGBD, Plan
from ...errors import PlanError
from .format import MAX_ANCHORS, build_grammar, parse_plan, plan_schema
from .gguf import scale_plan
from .prompt import chat_messages, downscale, image_data_uri, load_assets

log = logging.getLogger(__name__)

CONSTRAINTS = ("grammar", "json_schema", "none")
_RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RemotePlannerConfig:
    """``base_url`` ends before ``/chat/completions`` (e.g. ``http://127.0.0.1:8080/v1``)."""

    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "planner"
    constraint: str = "grammar"
    api_key: str | None = None
    timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    max_tokens: int = 768
    temperature: float = 0.0
    seed: int = 0
    max_anchors: int = MAX_ANCHORS
    image_max_side: int | None = 448
    text_only: bool = False

    def __post_init__(self) -> None:
        check(self.base_url.startswith(("http://", "https://")), "base_url",
              f"expected an http(s) URL, got {self.base_url!r}")
        check(self.constraint in CONSTRAINTS, "constraint", f"expected one of {CONSTRAINTS}, got {self.constraint!r}")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        check(self.retries >= 0, "retries", f"must be >= 0, got {self.retries}")
        check(self.backoff_s >= 0, "backoff_s", f"must be >= 0, got {self.backoff_s}")
        check(self.max_tokens >= 16, "max_tokens", f"must be >= 16, got {self.max_tokens}")
        check(1 <= self.max_anchors <= 64, "max_anchors", f"must lie in [1, 64], got {self.max_anchors}")


class RemotePlanner:
    """``Planner`` over HTTP. Holds no connection between calls, so ``close`` only marks it closed."""

    name = "remote"

    def __init__(self, config: RemotePlannerConfig) -> None:
        self.config = config
        self.assets = load_assets()
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "RemotePlanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, messages: list[dict], width: int, height: int) -> dict:
        cfg = self.config
        body: dict = {"model": cfg.model, "messages": messages, "max_tokens": cfg.max_tokens,
                      "temperature": cfg.temperature, "seed": cfg.seed, "stream": False}
        if cfg.constraint == "grammar":
            body["grammar"] = build_grammar(width, height, cfg.max_anchors)
        elif cfg.constraint == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "plan", "strict": True, "schema": plan_schema(width, height, cfg.max_anchors)}}
        return body

    def _post(self, body: dict) -> dict:
        """POST with retries; returns the decoded JSON response or raises PlanError."""
        cfg = self.config
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        last: str = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {e.code} {e.reason}: {detail}"
                if e.code in _RETRY_STATUS:
                    log.warning("planner server %s: %s (attempt %d/%d)", self.url, last, attempt + 1, cfg.retries + 1)
                    continue
                raise PlanError(f"remote planner {self.url} refused the request ({last}); check the model "
                                f"name, that it has vision for image requests, and the constraint option") from e
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                log.warning("planner server %s unreachable: %s (attempt %d/%d)", self.url, last, attempt + 1,
                            cfg.retries + 1)
                continue
            try:
                out = json.loads(raw)
                out["choices"][0]["message"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
                raise PlanError(f"remote planner {self.url} answered something that is not a chat completion "
                                f"({type(e).__name__}): {raw[:200]!r}; is base_url an OpenAI-compatible "
                                f"server?") from e
            return out
        raise PlanError(f"remote planner {self.url} failed after {cfg.retries + 1} attempt(s): {last}; "
                        f"is the server running (e.g. 'python -m llama_cpp.server --model planner.gguf')?")

    def plan(self, rgbd: RGBD, instruction: str) -> Plan:
        if self._closed:
            raise PlanError("remote planner is closed; create a new one")
        if not isinstance(rgbd, RGBD):
            raise PlanError(f"remote planner: expected an RGBD frame, got {type(rgbd).__name__}")
        cfg = self.config
        t0 = time.perf_counter()
        h, w = rgbd.rgb.shape[:2]
        if cfg.text_only:
            sh, sw, factor, uri = h, w, 1, None
        else:
            small, factor = downscale(rgbd.rgb, cfg.image_max_side)
            sh, sw = small.shape[:2]
            uri = image_data_uri(small)
        try:
            prompt = self.assets.render(instruction, sw, sh, cfg.max_anchors)
        except ValueError as e:
            raise PlanError(f"remote planner: {e}") from e
        body = self.request_body(chat_messages(prompt, uri), sw, sh)
        t1 = time.perf_counter()
        out = self._post(body)
        t2 = time.perf_counter()
        choice = out["choices"][0]
        text = choice["message"].get("content") or ""
        if choice.get("finish_reason") == "length":
            raise PlanError(f"remote planner: answer cut off at max_tokens={cfg.max_tokens}; raise max_tokens")
        plan = parse_plan(text, instruction, sw, sh, max_anchors=cfg.max_anchors, source=self.name)
        plan = scale_plan(plan, factor, w, h)
        t3 = time.perf_counter()
        usage = out.get("usage") or {}
        timings = {"request_ms": (t2 - t1) * 1e3, "prepare_ms": (t1 - t0) * 1e3, "parse_ms": (t3 - t2) * 1e3,
                   "total_ms": (t3 - t0) * 1e3, "n_tokens": float(usage.get("completion_tokens", 0)),
                   "n_prompt_tokens": float(usage.get("prompt_tokens", 0))}
        server = out.get("timings") or {}  # llama.cpp's llama-server reports its own timings
        for src, dst in (("prompt_ms", "prompt_eval_ms"), ("predicted_ms", "generation_ms"),
                         ("predicted_per_second", "tokens_per_s")):
            if isinstance(server.get(src), (int, float)):
                timings[dst] = float(server[src])
        return dataclasses.replace(plan, timings_ms=timings, stamp_ns=rgbd.stamp_ns)

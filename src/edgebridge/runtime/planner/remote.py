"""Remote planner: the same request sent to an OpenAI-compatible chat-completions server.

Works with llama-cpp-python's server and llama.cpp's ``llama-server`` (``constraint = "grammar"``:
the bounded GBNF grammar goes in the request body), and with vLLM or Ollama (``constraint =
"json_schema"``: ``response_format`` with the plan schema). Standard library only (``http.client``,
see :mod:`.transport`): one overall deadline per HTTP request (``timeout_s``), an answer bounded to
``max_response_bytes``, retries with exponential backoff on connection errors, deadlines, HTTP 429 and
5xx. A malformed answer (non-JSON body, no choices, a field of the wrong type, an answer that is not a
valid plan) is a :class:`PlanError` at once.

The API key is sent only to the configured origin (never across a redirect to another one), and not
over plain ``http://`` to a host other than loopback unless ``allow_insecure_http`` says so; a
self-signed server is trusted through ``ca_bundle`` (a PEM file).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError, check
from ...contracts import RGBD, Plan
from ...errors import PlanError
from . import transport
from .format import MAX_ANCHORS, _brief, build_grammar, parse_plan, plan_schema
from .gguf import scale_plan
from .prompt import chat_messages, downscale, image_data_uri, load_assets

log = logging.getLogger(__name__)

CONSTRAINTS = ("grammar", "json_schema", "none")
_RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RESPONSE_BYTES = 1 << 20  # a plan answer is about a kilobyte; llama-server adds its timings


@dataclass(frozen=True)
class RemotePlannerConfig:
    """``base_url`` ends before ``/chat/completions`` (e.g. ``http://127.0.0.1:8080/v1``). ``timeout_s``
    bounds each HTTP request as a whole (connect, send, the full answer), ``max_response_bytes`` its
    answer. ``api_key`` goes over ``https://``, or over ``http://`` to loopback, or elsewhere only with
    ``allow_insecure_http = true``. ``ca_bundle``: a PEM file of the CA (or self-signed certificate) that
    signed the server's certificate."""

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
    max_response_bytes: int = MAX_RESPONSE_BYTES
    allow_insecure_http: bool = False
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        check(self.base_url.startswith(("http://", "https://")), "base_url",
              f"expected an http(s) URL, got {self.base_url!r}")
        try:
            scheme, host, _ = transport.origin(self.base_url)
        except ValueError as e:  # a port that is not a number
            raise ConfigError(f"base_url: {self.base_url!r} is not a valid URL ({e})") from e
        check(bool(host), "base_url", f"no host in {self.base_url!r}")
        check(self.constraint in CONSTRAINTS, "constraint", f"expected one of {CONSTRAINTS}, got {self.constraint!r}")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        check(self.retries >= 0, "retries", f"must be >= 0, got {self.retries}")
        check(self.backoff_s >= 0, "backoff_s", f"must be >= 0, got {self.backoff_s}")
        check(self.max_tokens >= 16, "max_tokens", f"must be >= 16, got {self.max_tokens}")
        check(1 <= self.max_anchors <= 64, "max_anchors", f"must lie in [1, 64], got {self.max_anchors}")
        check(self.max_response_bytes >= 1024, "max_response_bytes",
              f"must be >= 1024 bytes, got {self.max_response_bytes}")
        check(not self.api_key or scheme == "https" or transport.is_loopback(host) or self.allow_insecure_http,
              "api_key", f"refusing to send the API key over plain http:// to {host}, where anyone on the way "
              f"can read it; use an https:// base_url, or set allow_insecure_http = true on a network you trust")
        if self.ca_bundle is not None:
            check(Path(self.ca_bundle).is_file(), "ca_bundle",
                  f"no such file: {self.ca_bundle!r} (relative paths start in {Path.cwd()}); give the PEM file "
                  f"of the CA or self-signed certificate the planner server uses")
            check(scheme == "https", "ca_bundle", f"only used for an https:// base_url, got {self.base_url!r}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an ``https://`` server (``ca_bundle`` trusted when given); None for http."""
        if not self.base_url.startswith("https://"):
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ConfigError(f"ca_bundle: {self.ca_bundle!r} is not a readable PEM certificate bundle ({e}); "
                              f"give the CA certificate in PEM form") from e


class RemotePlanner:
    """``Planner`` over HTTP. Holds no connection between calls, so ``close`` only marks it closed."""

    name = "remote"

    def __init__(self, config: RemotePlannerConfig) -> None:
        self.config = config
        self.assets = load_assets()
        self._closed = False
        self._ctx: ssl.SSLContext | None = None
        self._ctx_for: RemotePlannerConfig | None = None
        self._context()  # a bad ca_bundle fails here, while the planner is built

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

    def _context(self) -> ssl.SSLContext | None:
        if self._ctx_for is not self.config:  # built once per config (tests swap configs)
            self._ctx, self._ctx_for = self.config.ssl_context(), self.config
        return self._ctx

    def _post(self, body: dict) -> dict:
        """POST with retries; returns the decoded JSON response or raises PlanError."""
        cfg = self.config
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        context = self._context()
        last: str = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                resp = transport.post(self.url, data, headers, timeout_s=cfg.timeout_s,
                                      max_bytes=cfg.max_response_bytes, context=context)
            except transport.AnswerTooLarge as e:
                raise PlanError(f"remote planner {self.url}: {e} (max_response_bytes = {cfg.max_response_bytes}); "
                                f"raise planner.options.max_response_bytes if the server is right") from e
            except transport.RedirectRefused as e:
                raise PlanError(f"remote planner {self.url}: redirect not followed: {e}") from e
            except ssl.SSLCertVerificationError as e:
                raise PlanError(f"remote planner {self.url}: the server's certificate is not trusted "
                                f"({e.verify_message}); for a self-signed server set ca_bundle to its "
                                f"CA certificate (PEM)") from e
            except (OSError, http.client.HTTPException) as e:  # refused, reset, TLS, deadline, broken answer
                last = f"{type(e).__name__}: {e}"
                log.warning("planner server %s unreachable: %s (attempt %d/%d)", self.url, last, attempt + 1,
                            cfg.retries + 1)
                continue
            if resp.status >= 400:
                detail = resp.body[:300].decode("utf-8", "replace")
                last = f"HTTP {resp.status} {resp.reason}: {detail}"
                if resp.status in _RETRY_STATUS:
                    log.warning("planner server %s: %s (attempt %d/%d)", self.url, last, attempt + 1, cfg.retries + 1)
                    continue
                raise PlanError(f"remote planner {self.url} refused the request ({last}); check the model "
                                f"name, that it has vision for image requests, and the constraint option")
            return self._decode(resp.body)
        raise PlanError(f"remote planner {self.url} failed after {cfg.retries + 1} attempt(s): {last}; "
                        f"is the server running (e.g. 'python -m llama_cpp.server --model planner.gguf')?")

    def _decode(self, raw: bytes) -> dict:
        """The body as a chat completion: ``choices[0].message`` an object whose ``content`` is text (or
        null), ``usage`` / ``timings`` objects when present; anything else is a PlanError."""
        def bad(why: str) -> PlanError:
            return PlanError(f"remote planner {self.url} answered something that is not a chat completion "
                             f"({why}): {raw[:200]!r}; is base_url an OpenAI-compatible server?")

        try:
            out = json.loads(raw)
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, a huge integer, deep nesting
            raise bad(type(e).__name__) from e
        if not isinstance(out, dict):
            raise bad(f"the body is a JSON {type(out).__name__}, not an object")
        choices = out.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise bad("no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise bad(f"choices[0].message is {type(message).__name__}, not an object")
        if not isinstance(message.get("content"), (str, type(None))):
            raise bad(f"choices[0].message.content is {type(message['content']).__name__}, not text")
        if not isinstance(choices[0].get("finish_reason"), (str, type(None))):
            raise bad("choices[0].finish_reason is not text")
        for key in ("usage", "timings"):
            if not isinstance(out.get(key), (dict, type(None))):
                raise bad(f"{key} is {type(out[key]).__name__}, not an object")
        return out

    @staticmethod
    def _number(table: dict | None, key: str) -> float | None:
        """``table[key]`` as a finite float, or None when absent or not a number."""
        val = (table or {}).get(key)
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            return None
        try:
            val = float(val)
        except OverflowError:
            return None
        return val if math.isfinite(val) else None

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
        finish = choice.get("finish_reason")
        if finish == "length":
            raise PlanError(f"remote planner: answer cut off at max_tokens={cfg.max_tokens}; raise max_tokens")
        if finish not in (None, "stop"):  # content_filter, tool_calls, ...: the text may be partial
            raise PlanError(f"remote planner: the answer ended with finish_reason {_brief(finish)}, not 'stop'; "
                            f"it may be incomplete, so it is not used")
        plan = parse_plan(text, instruction, sw, sh, max_anchors=cfg.max_anchors, source=self.name)
        plan = scale_plan(plan, factor, w, h)
        t3 = time.perf_counter()
        usage = out.get("usage")
        timings = {"request_ms": (t2 - t1) * 1e3, "prepare_ms": (t1 - t0) * 1e3, "parse_ms": (t3 - t2) * 1e3,
                   "total_ms": (t3 - t0) * 1e3, "n_tokens": self._number(usage, "completion_tokens") or 0.0,
                   "n_prompt_tokens": self._number(usage, "prompt_tokens") or 0.0}
        server = out.get("timings")  # llama.cpp's llama-server reports its own timings
        for src, dst in (("prompt_ms", "prompt_eval_ms"), ("predicted_ms", "generation_ms"),
                         ("predicted_per_second", "tokens_per_s")):
            val = self._number(server, src)
            if val is not None:
                timings[dst] = val
        return dataclasses.replace(plan, timings_ms=timings, stamp_ns=rgbd.stamp_ns)

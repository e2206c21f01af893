"""Remote planner against llama-cpp-python's own server on loopback, a down server, and bad servers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgebridge.errors import PlanError
from edgebridge.runtime.planner.format import MAX_ANCHORS
from edgebridge.runtime.planner.gguf import blank_frame
from edgebridge.runtime.planner.remote import RemotePlanner, RemotePlannerConfig

READY_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tiny_model, tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] (extra 'vlm') not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_model),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                 "--n_threads", "1", "--model_alias", "tiny"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {READY_TIMEOUT_S} s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_plans_through_llama_cpp_server_with_grammar(llama_server):
    cfg = RemotePlannerConfig(base_url=llama_server, model="tiny", text_only=True, temperature=1.0, timeout_s=60)
    with RemotePlanner(cfg) as planner:
        for seed in range(5):
            planner.config = RemotePlannerConfig(**{**cfg.__dict__, "seed": seed})
            plan = planner.plan(blank_frame(640, 480), "put the block in the tray")
            assert plan.source == "remote" and 1 <= len(plan.anchors) <= 8
            assert all(a.u < 640 and a.v < 480 for a in plan.anchors)
            assert plan.timings_ms["request_ms"] > 0 and plan.timings_ms["n_tokens"] > 0


def test_server_down_is_a_plan_error_after_retries():
    port = _free_port()
    cfg = RemotePlannerConfig(base_url=f"http://127.0.0.1:{port}/v1", retries=2, backoff_s=0.01, timeout_s=2,
                              text_only=True)
    t0 = time.monotonic()
    with pytest.raises(PlanError, match=r"failed after 3 attempt\(s\).*is the server running"):
        RemotePlanner(cfg).plan(blank_frame(), "pick")
    assert time.monotonic() - t0 < 5


class _Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, body) pairs; counts requests."""

    script: list = []
    bodies: list = []

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(json.loads(self.rfile.read(n)))
        status, body = type(self).script.pop(0) if type(self).script else (200, b"garbage")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted():
    handler = type("H", (_Scripted,), {"script": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _completion(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}], "usage": {"completion_tokens": 7}}).encode()


def test_garbage_body_is_a_plan_error(scripted):
    handler, url = scripted
    handler.script = [(200, b"<html>hello</html>")]
    with pytest.raises(PlanError, match="not a chat completion"):
        RemotePlanner(RemotePlannerConfig(base_url=url, text_only=True)).plan(blank_frame(), "pick")


def test_invalid_plan_content_is_a_plan_error(scripted):
    handler, url = scripted
    handler.script = [(200, _completion('{"anchors": [{"point_2d": [500, 1], "gripper": "open"}], "yaw": 0}'))]
    with pytest.raises(PlanError, match="maximum 63"):
        RemotePlanner(RemotePlannerConfig(base_url=url, text_only=True)).plan(blank_frame(), "pick")


def test_retries_on_503_then_succeeds_and_json_schema_mode(scripted):
    handler, url = scripted
    good = '{"anchors": [{"point_2d": [5, 6], "gripper": "close"}], "yaw": 10}'
    handler.script = [(503, b'{"error": "loading"}'), (200, _completion(good))]
    cfg = RemotePlannerConfig(base_url=url, constraint="json_schema", backoff_s=0.01, image_max_side=32)
    plan = RemotePlanner(cfg).plan(blank_frame(64, 48), "pick")
    assert len(handler.bodies) == 2
    body = handler.bodies[-1]
    assert "grammar" not in body and body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["anchors"]["maxItems"] == MAX_ANCHORS
    image = body["messages"][1]["content"][0]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")
    # the image went out at 32x24: anchors come back scaled to the 64x48 frame
    assert (plan.anchors[0].u, plan.anchors[0].v) == (11, 13)


def test_client_error_is_not_retried(scripted):
    handler, url = scripted
    handler.script = [(400, b'{"error": "model has no vision"}')]
    with pytest.raises(PlanError, match="HTTP 400.*no vision"):
        RemotePlanner(RemotePlannerConfig(base_url=url, backoff_s=0.01)).plan(blank_frame(), "pick")
    assert len(handler.bodies) == 1

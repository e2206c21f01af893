"""Remote planner against misbehaving servers on real loopback sockets: malformed answers, answers too
large, a server that trickles, redirects (the API key stays with its origin), plain-http keys, and TLS
with a self-signed certificate (``ca_bundle``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgebridge.config import ConfigError, from_dict
from edgebridge.errors import PlanError
from edgebridge.runtime.planner.gguf import blank_frame
from edgebridge.runtime.planner.remote import RemotePlanner, RemotePlannerConfig

GOOD = '{"anchors": [{"point_2d": [5, 6], "gripper": "close"}], "yaw": 10}'


def completion(content=GOOD, **extra) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}], **extra}


class Server:
    """A loopback HTTP(S) server whose POST handler is ``answer(handler)``; records request headers."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.headers, self.paths = answer, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.headers.append(dict(self.headers))
                outer.paths.append(self.path)
                try:
                    outer.answer(self)
                except OSError:  # the client went away (its deadline)
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve():
    servers = []

    def start(answer, tls=None) -> Server:
        servers.append(Server(answer, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def reply(body, status=200, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(h):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


def plan(url, **cfg):
    return RemotePlanner(RemotePlannerConfig(base_url=url, text_only=True, backoff_s=0.01, **cfg)).plan(
        blank_frame(64, 48), "pick")


# ----------------------------------------------------------------------------- malformed answers

@pytest.mark.parametrize("body, why", [
    ([1, 2], "body is a JSON list"),
    ({"choices": "none"}, "no choices"),
    ({"choices": [None]}, "no choices"),
    ({"choices": [{"message": "hello"}]}, "message is str, not an object"),
    ({"choices": [{"message": [1]}]}, "message is list"),
    ({"choices": [{"message": {"content": {"text": GOOD}}}]}, "content is dict, not text"),
    (completion(usage=[1]), "usage is list, not an object"),
    (completion(usage="7 tokens"), "usage is str"),
    (completion(timings=5), "timings is int, not an object"),
    (b"[" * 100_000, "RecursionError"),
    (b'{"choices": ' + b"9" * 5000 + b"}", "ValueError"),
    (b"\xff\xfe\x00garbage", "not a chat completion"),
    (completion(content=GOOD.replace("10", "1" * 5000)), "answer is not a plan"),
    (completion(content=GOOD.replace("10", "NaN")), "NaN is not a JSON number"),
    ({"choices": [{"message": {"content": GOOD}, "finish_reason": "content_filter"}]}, "finish_reason 'content_filter'"),
    ({"choices": [{"message": {"content": GOOD}, "finish_reason": "length"}]}, "raise max_tokens"),
])
def test_malformed_answers_are_plan_errors(serve, body, why):
    s = serve(reply(body))
    with pytest.raises(PlanError, match=why):
        plan(s.url)


def test_odd_usage_and_timing_values_are_ignored_not_fatal(serve):
    body = json.dumps(completion(usage={"completion_tokens": "many", "prompt_tokens": 1e400},
                                 timings={"prompt_ms": 12.5, "predicted_ms": "x", "predicted_per_second": None}))
    s = serve(reply(body.replace("1e400", "Infinity").encode()))
    p = plan(s.url)
    assert p.timings_ms["n_tokens"] == 0.0 and p.timings_ms["n_prompt_tokens"] == 0.0
    assert p.timings_ms["prompt_eval_ms"] == 12.5 and "generation_ms" not in p.timings_ms


# ----------------------------------------------------------------------------- size and deadline

def test_an_answer_over_max_response_bytes_is_refused(serve):
    padded = json.dumps(completion()).encode() + b" " * 10_000  # valid JSON, just too big
    s = serve(reply(padded))
    assert plan(s.url).anchors  # under the default bound it is a plan
    with pytest.raises(PlanError, match=r"announces 10\d\d\d bytes.*max_response_bytes = 4096"):
        plan(s.url, max_response_bytes=4096)

    def unannounced(h):  # no Content-Length: the body runs until the connection closes
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + padded)
    s2 = serve(unannounced)
    with pytest.raises(PlanError, match=r"ran past 4096 bytes.*raise planner.options.max_response_bytes"):
        plan(s2.url, max_response_bytes=4096)
    assert len(s2.headers) == 1  # not retried


@pytest.mark.parametrize("where", ["body", "headers", "unannounced body"])
def test_a_trickling_server_cannot_stretch_the_deadline(serve, where):
    def trickle(h):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        if where == "unannounced body":  # read until the connection closes
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        if where != "headers":
            h.wfile.write(head)
            h.wfile.flush()
            head = b" " * 100000
        for byte in head[:60]:  # one byte every 50 ms: each read waits far less than timeout_s
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.05)
    s = serve(trickle)
    t0 = time.monotonic()
    with pytest.raises(PlanError, match=r"failed after 1 attempt\(s\): DeadlineExceeded: no complete answer within 0.4 s"):
        plan(s.url, timeout_s=0.4, retries=0)
    assert time.monotonic() - t0 < 0.9


# ----------------------------------------------------------------------------- redirects and keys

def test_the_key_is_not_forwarded_to_another_origin(serve):
    other = serve(reply(completion()))
    first = serve(reply(b"", status=307, headers={"Location": other.url + "/chat/completions"}))
    p = plan(first.url, api_key="s3cret")
    assert p.anchors and first.headers[0]["Authorization"] == "Bearer s3cret"
    assert len(other.headers) == 1 and "Authorization" not in other.headers[0]


def test_a_same_origin_redirect_keeps_the_key(serve):
    def answer(h):
        if h.path.startswith("/v1/"):
            return reply(b"", status=308, headers={"Location": "/v2/chat/completions"})(h)
        return reply(completion())(h)
    s = serve(answer)
    assert plan(s.url, api_key="s3cret").anchors
    assert s.paths == ["/v1/chat/completions", "/v2/chat/completions"]
    assert [h.get("Authorization") for h in s.headers] == ["Bearer s3cret"] * 2


@pytest.mark.parametrize("status", [301, 302, 303])
def test_redirects_that_would_drop_the_post_are_refused(serve, status):
    other = serve(reply(completion()))
    first = serve(reply(b"", status=status, headers={"Location": other.url + "/chat/completions"}))
    with pytest.raises(PlanError, match=f"redirect not followed: HTTP {status}.*307/308"):
        plan(first.url, api_key="s3cret")
    assert other.headers == []  # neither the key nor anything else went there


@pytest.mark.parametrize("url, ok", [
    ("http://10.1.2.3:8080/v1", False), ("http://planner.lan/v1", False), ("http://127.0.0.1:8080/v1", True),
    ("http://127.3.0.1/v1", True), ("http://localhost:8080/v1", True), ("http://[::1]:8080/v1", True),
    ("https://planner.lan/v1", True),
])
def test_a_key_over_plain_http_is_refused_unless_loopback_or_allowed(url, ok):
    if ok:
        RemotePlannerConfig(base_url=url, api_key="k")
    else:
        with pytest.raises(ConfigError, match=r"planner.options.api_key: refusing to send the API key over plain "
                                              r"http:// .*allow_insecure_http = true"):
            from_dict(RemotePlannerConfig, {"base_url": url, "api_key": "k"}, prefix="planner.options.")
        RemotePlannerConfig(base_url=url, api_key="k", allow_insecure_http=True)
        RemotePlannerConfig(base_url=url)  # no key, nothing to protect


# ----------------------------------------------------------------------------- TLS

@pytest.mark.parametrize("url, why", [("http://:8080/v1", "no host"), ("http://h:port/v1", "not a valid URL"),
                                      ("ftp://h/v1", "expected an http")])
def test_a_bad_base_url_is_a_config_error(url, why):
    with pytest.raises(ConfigError, match=f"base_url: .*{why}"):
        RemotePlannerConfig(base_url=url)


def test_a_missing_or_bad_ca_bundle_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"planner.options.ca_bundle: no such file: 'nope.pem'"):
        from_dict(RemotePlannerConfig, {"base_url": "https://h/v1", "ca_bundle": "nope.pem"}, prefix="planner.options.")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca_bundle: .*junk.pem' is not a readable PEM"):
        RemotePlanner(RemotePlannerConfig(base_url="https://h/v1", ca_bundle=str(junk)))


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """(cert.pem, key.pem) for 127.0.0.1 / localhost, made here with the cryptography package or openssl."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    if importlib.util.find_spec("cryptography") is not None:
        _make_cert_cryptography(cert, key)
    elif shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    else:
        pytest.skip("neither the cryptography package nor the openssl command is available to make a test certificate")
    return cert, key


def _make_cert_cryptography(cert_path, key_path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_tls_with_a_self_signed_server_needs_its_ca_bundle(serve, self_signed):
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    s = serve(reply(completion()), tls=tls)
    p = plan(s.url, ca_bundle=str(cert), api_key="s3cret")
    assert p.anchors and s.headers[0]["Authorization"] == "Bearer s3cret"
    with pytest.raises(PlanError, match="certificate is not trusted.*set ca_bundle"):
        plan(s.url)
    assert len(s.headers) == 1  # the untrusted attempt sent nothing


def test_a_stalled_tls_handshake_ends_at_the_deadline(self_signed):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts TCP (the kernel's backlog) but never answers the TLS hello
    try:
        t0 = time.monotonic()
        with pytest.raises(PlanError, match="DeadlineExceeded"):
            plan(f"https://127.0.0.1:{listener.getsockname()[1]}/v1", ca_bundle=str(self_signed[0]),
                 timeout_s=0.3, retries=0)
        assert time.monotonic() - t0 < 0.8
    finally:
        listener.close()

"""The load-test tool: it refuses any address but loopback, and reports its figures from a stub server."""

import base64
import json
import socket
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from custom.tools.loadtest import LoadTestFailed, load_test


def test_load_test_refuses_a_host_that_is_not_loopback_before_connecting(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for url in ("http://10.0.0.5:5001/invocations", "http://example.com/invocations", "http://localhost.example.com/x",
                "https://127.0.0.1:5001/invocations", "https://localhost:5001/invocations"):
        with pytest.raises(ValueError, match="load_test sends only to a loopback address"):
            load_test(url=url, requests=1)
    with pytest.raises(ValueError, match="requests must be 1-100000"):
        load_test(url="http://127.0.0.1:1/invocations", requests=0)


@pytest.fixture
def stub():
    """A JSON scoring stub on 127.0.0.1: every fifth request (or, with ``refuse_all``, every one) is answered HTTP 400
    with ``reason``; the bodies are kept."""
    bodies, lock = [], threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                bodies.append(body)
                count = len(bodies)
            rows = body["dataframe_split"]["data"]
            if count % 5 == 0 or control.refuse_all:
                status, answer = 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": control.reason}
            else:
                status, answer = 200, {"predictions": [{"A": 0.5}] * len(rows)}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    control = types.SimpleNamespace(refuse_all=False, reason="row 0: bad")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/invocations", bodies, control
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_load_test_reports_rate_latencies_and_errors_of_a_local_server(stub, capsys):
    import io

    url, bodies, _ = stub
    result = load_test(url=url, requests=20, clients=3, images=2, image_size=16, time_limit=60)
    assert len(bodies) == 20 and result["sent"] == 20 and result["errors"] == 4 and result["answered"] == 16
    assert result["first_error"] == "HTTP 400: row 0: bad"
    rows = bodies[0]["dataframe_split"]["data"]
    assert bodies[0]["dataframe_split"]["columns"] == ["image"] and len(rows) == 2
    assert Image.open(io.BytesIO(base64.b64decode(rows[0][0]))).size == (16, 16)
    assert 0 < result["p50_s"] <= result["p99_s"] < 60 and result["requests_per_s"] > 0
    assert result["images_per_s"] == pytest.approx(2 * result["requests_per_s"])
    assert result["requests_per_s"] == pytest.approx(16 / result["seconds"])  # answered requests only
    out = capsys.readouterr().out
    assert out.startswith(f"20 requests of 2 image(s), 3 clients, {result['seconds']:.1f} s: 16 answered, "
                          f"{result['requests_per_s']:.1f} requests/s")
    assert f"latency p50 {result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms; 4 error(s)" in out
    assert "first error: HTTP 400: " in out
    # the time limit bounds a run: nothing is sent after it
    bodies.clear()
    stopped = load_test(url=url, requests=1000, clients=2, images=1, time_limit=0)
    assert stopped["sent"] == len(bodies) == 0 and "stopped by the 0 s time limit" in capsys.readouterr().out


def test_load_test_fails_when_requests_fail_and_counts_only_answered_requests(stub, capsys):
    url, bodies, control = stub
    control.refuse_all, control.reason = True, "row 3: not like the training images: " + "x" * 400 + " (end)"
    with pytest.raises(LoadTestFailed, match=r"10 of 10 requests failed \(max_errors 0\)"):
        load_test(url=url.replace("127.0.0.1", "localhost"), requests=10, clients=2, images=1, max_errors=0)
    out = capsys.readouterr().out
    assert "0 answered, 0.0 requests/s (0.0 images/s)" in out and "10 error(s)" in out
    assert f"first error: HTTP 400: {control.reason}\n" in out  # the reason in full, not cut
    # allowed errors do not fail; None never fails (the library default)
    assert load_test(url=url, requests=3, clients=1, images=1, max_errors=3)["errors"] == 3
    assert load_test(url=url, requests=2, clients=1, images=1)["answered"] == 0


def test_the_load_test_command_exits_with_status_1_when_a_request_failed(stub):
    import subprocess
    import sys

    url, _, control = stub
    control.refuse_all = True
    done = subprocess.run([sys.executable, "-m", "custom.cli", "load_test", "--url", url, "--requests", "2",
                           "--clients", "1", "--images", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "load_test: 2 of 2 requests failed (max_errors 0); first error: HTTP 400: row 0: bad" in done.stderr

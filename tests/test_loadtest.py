"""The load-test tool: it refuses any address but loopback, and reports its figures from a stub server."""

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from custom.tools.loadtest import load_test


def test_load_test_refuses_a_host_that_is_not_loopback_before_connecting(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for url in ("http://10.0.0.5:5001/invocations", "http://example.com/invocations", "http://localhost:5001/x",
                "https://127.0.0.1:5001/invocations"):
        with pytest.raises(ValueError, match="load_test sends only to a loopback address"):
            load_test(url=url, requests=1)
    with pytest.raises(ValueError, match="requests must be 1-100000"):
        load_test(url="http://127.0.0.1:1/invocations", requests=0)


@pytest.fixture
def stub():
    """A JSON scoring stub on 127.0.0.1: every fifth request is answered HTTP 400; the bodies are kept."""
    bodies, lock = [], threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                bodies.append(body)
                count = len(bodies)
            rows = body["dataframe_split"]["data"]
            if count % 5 == 0:
                status, answer = 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "row 0: bad"}
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/invocations", bodies
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_load_test_reports_rate_latencies_and_errors_of_a_local_server(stub, capsys):
    import io

    url, bodies = stub
    result = load_test(url=url, requests=20, clients=3, images=2, image_size=16, time_limit=60)
    assert len(bodies) == 20 and result["sent"] == 20 and result["errors"] == 4
    assert result["first_error"].startswith("HTTP 400: ")
    rows = bodies[0]["dataframe_split"]["data"]
    assert bodies[0]["dataframe_split"]["columns"] == ["image"] and len(rows) == 2
    assert Image.open(io.BytesIO(base64.b64decode(rows[0][0]))).size == (16, 16)
    assert 0 < result["p50_s"] <= result["p99_s"] < 60 and result["requests_per_s"] > 0
    assert result["images_per_s"] == pytest.approx(2 * result["requests_per_s"])
    out = capsys.readouterr().out
    assert out.startswith(f"20 requests of 2 image(s), 3 clients, {result['seconds']:.1f} s: "
                          f"{result['requests_per_s']:.1f} requests/s")
    assert f"latency p50 {result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms; 4 error(s)" in out
    assert "first error: HTTP 400: " in out
    # the time limit bounds a run: nothing is sent after it
    bodies.clear()
    stopped = load_test(url=url, requests=1000, clients=2, images=1, time_limit=0)
    assert stopped["sent"] == len(bodies) == 0 and "stopped by the 0 s time limit" in capsys.readouterr().out

"""``python -m custom.cli load_test``: a bounded load test of a served model on this machine.

Sends ``requests`` scoring requests, each of ``images`` base64 PNGs in MLflow's ``dataframe_split``
format, from ``clients`` threads (``urllib.request``) to a model served on a loopback address
(``mlflow models serve ... -h 127.0.0.1``), and prints requests per second, the 50th and 99th
percentile latencies and the number of errors (an answer other than HTTP 200, or no answer). The
rates count answered requests only (HTTP 200): a server that refuses everything quickly has a rate
of 0, not a high one. It stops sending after ``time_limit`` seconds even when not all requests are
sent. Only loopback addresses are accepted (``localhost``, 127.0.0.0/8, ``::1``): it is a tool to
measure a local server, not to load anyone else's. From the command line it exits with status 1
when more than ``max_errors`` requests failed (default 0: any failure).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np

#: the most requests and clients one run sends with.
MAX_REQUESTS, MAX_CLIENTS = 100_000, 64


#: host names that always mean this machine (RFC 6761); other names are not resolved, so never sent anywhere else.
LOOPBACK_NAMES = ("localhost",)


class LoadTestFailed(RuntimeError):
    """More requests failed than ``max_errors`` allows; the message gives the count and the first error in full."""


def check_loopback(url: str) -> str:
    """``url`` when it is ``http://`` to a loopback address (``localhost``, 127.0.0.0/8, ::1); ValueError otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        loopback = parts.scheme == "http" and (host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback)
    except ValueError:  # another host name: not resolved, so never sent anywhere else
        loopback = False
    if not loopback:
        raise ValueError(f"load_test sends only to a loopback address such as http://127.0.0.1:5001/invocations; "
                         f"got {url!r} (host {host!r})")
    return url


def _png(size: int, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _payload(images: int, image_size: int, image: str | None) -> bytes:
    if image:
        with open(image, "rb") as f:
            encoded = [base64.b64encode(f.read()).decode()] * images
    else:
        encoded = [base64.b64encode(_png(image_size, i)).decode() for i in range(images)]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}).encode()


def _reason(body: bytes) -> str:
    """The reason a server gave with an error: MLflow's JSON ``message`` when there is one, else the body's text."""
    text = body.decode(errors="replace").strip()
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else text


def load_test(url: str = "http://127.0.0.1:5001/invocations", requests: int = 200, clients: int = 4, images: int = 8,
              image_size: int = 32, image: str | None = None, timeout: float = 60.0,
              time_limit: float = 300.0, max_errors: int | None = None) -> dict:
    """Send ``requests`` scoring requests from ``clients`` threads to a served model; print and return the figures.

    Args:
        url: the scoring endpoint, on a loopback address (127.0.0.1 or ::1).
        requests: how many requests to send (at most 100000).
        clients: concurrent clients, one thread each (at most 64).
        images: images per request.
        image_size: height and width of the random grey PNGs sent.
        image: an image file to send instead (the same file in every row).
        timeout: seconds to wait for one answer.
        time_limit: seconds after which no further request is sent.
        max_errors: failed requests allowed; more raise :class:`LoadTestFailed` after the figures are printed
            (``None``: never raise; the command line uses 0).

    Returns:
        dict with ``sent``, ``answered`` (HTTP 200), ``errors``, ``seconds``, ``requests_per_s`` and ``images_per_s``
        (answered requests only), ``p50_s``, ``p99_s`` (latencies of the answered requests) and ``first_error``
        (the first error in full, or None).
    """
    check_loopback(url)
    requests, clients, images = int(requests), int(clients), int(images)
    if not (1 <= requests <= MAX_REQUESTS and 1 <= clients <= MAX_CLIENTS and images >= 1):
        raise ValueError(f"requests must be 1-{MAX_REQUESTS}, clients 1-{MAX_CLIENTS} and images at least 1; got "
                         f"{requests}, {clients}, {images}")
    body = _payload(images, int(image_size), image)
    lock = threading.Lock()
    state = {"next": 0, "errors": 0, "first_error": None}
    latencies: list[float] = []  # answered requests
    failed: list[float] = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the address, no proxy
    start = time.perf_counter()
    deadline = start + float(time_limit)

    def client():
        while True:
            with lock:
                if state["next"] >= requests or time.perf_counter() >= deadline:
                    return
                state["next"] += 1
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            sent = time.perf_counter()
            error = None
            try:
                with opener.open(request, timeout=timeout) as answer:
                    answer.read()
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}: {_reason(e.read())}"
            except (OSError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
            elapsed = time.perf_counter() - sent
            with lock:
                (failed if error else latencies).append(elapsed)
                if error:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or error

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(clients, requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    answered = len(latencies)
    sent = answered + len(failed)
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if answered else (float("nan"),) * 2
    result = {"sent": sent, "answered": answered, "errors": state["errors"], "seconds": seconds,
              "requests_per_s": answered / seconds, "images_per_s": answered * images / seconds, "p50_s": p50,
              "p99_s": p99, "first_error": state["first_error"]}
    stopped = f" (stopped by the {time_limit:g} s time limit)" if sent < requests else ""
    print(f"{sent} requests of {images} image(s), {clients} clients, {seconds:.1f} s{stopped}: {answered} answered, "
          f"{result['requests_per_s']:.1f} requests/s ({result['images_per_s']:.1f} images/s); "
          f"latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; {state['errors']} error(s)", flush=True)
    if state["first_error"]:
        print(f"first error: {state['first_error']}", flush=True)
    if max_errors is not None and state["errors"] > int(max_errors):
        raise LoadTestFailed(f"{state['errors']} of {sent} requests failed (max_errors {int(max_errors)}); "
                             f"first error: {state['first_error']}")
    return result

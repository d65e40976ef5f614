"""`scripts/serve.py` under load and abuse on 127.0.0.1: bounded in count, time and memory.

One server subprocess (tiny model, 2 MB body limit, 2 s inactivity timeout) answers every
test here; its peak resident memory (VmHWM) is read from /proc before and after.
"""

import base64
import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from export_helpers import tiny_segmenter
from PIL import Image

from keras_fusionseg.export import export_saved_model

pytestmark = pytest.mark.slow  # a server subprocess, loads of requests, 2 s timeouts

MODEL = "shapes"
ROOT = pathlib.Path(__file__).resolve().parents[1]
BODY_LIMIT = 2 << 20


def _peak_rss_mb(pid):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("waitress")
    if not pathlib.Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's memory")
    export_dir = tmp_path_factory.mktemp("serve_load") / "sm"
    export_saved_model(tiny_segmenter(num_classes=3), export_dir)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "serve.py"),
        f"--saved_model={export_dir}",
        f"--model_name={MODEL}",
        "--port=0",
        "--max_body_mb=2",
        "--channel_timeout=2",
        "--threads=4",
        "--stop_after_seconds=300",  # a leftover process cannot outlive the test run by much
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ
    )
    try:
        line = process.stdout.readline()  # printed only after the warm-up predict
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, f"serve.py did not start: {line!r}"
        yield {"address": ("127.0.0.1", int(match.group(1))), "pid": process.pid, "peak": {}}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _png_b64(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _predict(address, body, timeout=60):
    with socket.create_connection(address, timeout=timeout) as sock:
        head = (
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, answer = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(answer)


def test_64_concurrent_requests_all_succeed(server):
    rng = np.random.default_rng(0)
    bodies = [
        json.dumps(
            {"instances": [{"b64": _png_b64(rng.integers(0, 256, (16, 16, 3), np.uint8))}]}
        ).encode()
        for _ in range(64)
    ]
    start = threading.Barrier(64)

    def call(body):
        start.wait(timeout=30)  # all 64 connect at the same moment
        return _predict(server["address"], body)

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(call, bodies, timeout=120))
    seconds = time.perf_counter() - began
    failures = [(status, answer) for status, answer in results if status != 200]
    server["peak"]["after 64 concurrent"] = _peak_rss_mb(server["pid"])
    print(f"\n64 concurrent predicts: {64 - len(failures)}/64 OK in {seconds:.1f} s")
    assert not failures, failures[:3]
    assert all(np.shape(answer["predictions"][0]) == (16, 16) for _, answer in results)


def _stall(address, data):
    sock = socket.create_connection(address, timeout=30)
    sock.sendall(data)
    return sock


def test_stalled_clients_do_not_block_others(server):
    address = server["address"]
    half_head = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n".encode()
    half_body = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        '{"instances": ['
    ).encode()
    stalled = [_stall(address, half_head if k % 2 else half_body) for k in range(100)]
    try:
        image = np.zeros((16, 16, 3), np.uint8)
        body = json.dumps({"instances": [{"b64": _png_b64(image)}]}).encode()
        began = time.perf_counter()
        for _ in range(8):  # more requests than worker threads
            assert _predict(address, body, timeout=10)[0] == 200
        assert time.perf_counter() - began < 10
        # The 2 s inactivity timeout (checked every second) closes every stalled connection.
        deadline = time.monotonic() + 15
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in stalled:
            sock.close()


def _upload(address, head, total, piece=1 << 16):
    """Sends `head` then up to `total` bytes of junk; returns (bytes sent, status or None)."""
    sent, status = 0, None
    with socket.create_connection(address, timeout=30) as sock:
        received = []

        def read():
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    received.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with contextlib.suppress(OSError):
            sock.sendall(head)
            junk = b"7" * piece
            while sent < total:
                sock.sendall(junk)
                sent += piece
        reader.join(30)
    answer = b"".join(received)
    if answer:
        status = int(answer.split(b" ", 2)[1])
    return sent, status


def test_hostile_uploads_are_cut_at_the_limit_and_memory_stays_bounded(server):
    address, total = server["address"], 48 << 20
    before = _peak_rss_mb(server["pid"])
    path = f"/v1/models/{MODEL}:predict"
    heads = {
        "Content-Length: -1": f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "Content-Length: 2**40": (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {2**40}\r\n\r\n"
        ),
        "chunked, one huge chunk": (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{total:x}\r\n"
        ),
        "no length, body follows": f"POST {path} HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    cases = [name for name in heads for _ in range(2)]  # two of each, all at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(
            pool.map(lambda name: _upload(address, heads[name].encode(), total), cases, timeout=120)
        )
    after = _peak_rss_mb(server["pid"])
    server["peak"]["hostile uploads"] = after
    print(f"\npeak RSS before hostile uploads {before:.0f} MB, after {after:.0f} MB")
    for name, (sent, status) in zip(cases, results, strict=True):
        print(f"  {name}: answered {status} after the client sent {sent / 2**20:.1f} MB")
        assert status is not None and 400 <= status < 500, (name, status)
        # The server stopped reading near the limit: far less than the whole upload went in.
        assert sent < total / 2, (name, sent)
    assert after - before < 64, (before, after)
    image = np.zeros((16, 16, 3), np.uint8)
    body = json.dumps({"instances": [{"b64": _png_b64(image)}]}).encode()
    assert _predict(address, body)[0] == 200

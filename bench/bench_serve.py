"""`serve` under load on loopback: requests/s and p50/p99 latency, with and without micro-batching.

Bundles: TF-IDF, and head:minilm (the packaged encoder with a trained head), both trained here
on demo tweets and exported with the small model answering every input (no LM stage). Each
server runs in its own process (`python -m ea_core serve`); the micro-batched and the unbatched
server of a bundle are both up and measured in alternating blocks, so that on a machine other jobs
load too both see the same background load, and each block also reads the server's CPU time (CPU
ms per request: what that load changes least). The load comes from this process: a
small keep-alive HTTP/1.1 client on raw asyncio sockets (so the client's own CPU cost stays low
beside the server's on 2 cores), C connections each sending POST /v1/chat/completions back to
back, for a fixed time after a warm-up, bounded in count and time, to 127.0.0.1 only. Every
request's text is new (a test tweet and a number), so no embedding or answer cache helps.

    .venv/bin/python bench/bench_serve.py [--seconds 6] [--rounds 3] [--clients 1 8 32] [--only tfidf|minilm]

Targets (issue 19): TF-IDF >= 500 req/s with p99 <= 50 ms at 8 clients; MiniLM head >= 100
req/s with micro-batching, and >= 3x its own unbatched rate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_REQUESTS = 200_000  # per measurement: a hard bound beside the time limit
MAX_PAYLOADS = 40_000  # distinct request texts (a test tweet and a number)


def make_bundles(out: Path, which: list[str]) -> dict[str, Path]:
    """TF-IDF and MiniLM-head bundles trained on demo tweets (the small model answers everything)."""
    from ea_core.bundle import export_bundle
    from ea_core.data import load_dataset
    from ea_core.models import make_model

    task = load_dataset("demo:tweets", max_train=2000, max_val=200, max_test=500)
    bundles = {}
    for name in which:
        t0 = time.perf_counter()
        if name == "tfidf":
            model = make_model("tfidf", seed=0)
        else:
            model = make_model("head:minilm", cache_dir=str(out / "emb-cache"), epochs=3, seed=0)
        train = task.train if name == "tfidf" else task.train.subset(np.arange(600))
        model.fit(train, task.val, task.labels)
        model.save(out / f"{name}-model")
        bundles[name] = export_bundle(out / f"{name}-bundle", labels=task.labels, stages=[
            {"name": name, "threshold": 0.0, "folder": out / f"{name}-model", "temperature": 1.0}],
            task={"name": "tweets", "pair": False, "text_col": "text", "modality": "text"})
        print(f"# {name}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
    return bundles, list(task.test.texts)


class Server:
    """`python -m ea_core serve` in a child process on a free loopback port."""

    def __init__(self, bundle: Path, batching: bool) -> None:
        from ea_core.serve.main import free_port

        self.port = free_port()
        cmd = [sys.executable, "-m", "ea_core", "serve", "--bundle", str(bundle), "--port", str(self.port),
               "--cache", "none"] + ([] if batching else ["--no-batching"])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=tempfile.gettempdir())

    def wait_ready(self, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _request(port: int, text: str) -> bytes:
    body = json.dumps({"model": "ea", "messages": [{"role": "user", "content": text}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _client(port: int, payloads: list[bytes], counter: Iterator[int], stop_at: float, latencies: list[float],
                  budget: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(payloads[next(counter) % len(payloads)])
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if b" 200 " not in status:
                raise RuntimeError(f"server answered {status!r}")
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(port: int, payloads: list[bytes], clients: int, seconds: float, start: int,
                warm_s: float) -> tuple[float, list[float]]:
    # Warm-up at this concurrency, not measured.
    counter = itertools.count(start)  # every request a text not sent before (no cache helps)
    if warm_s > 0:
        end = time.perf_counter() + warm_s
        await asyncio.gather(*(_client(port, payloads, counter, end, [], [MAX_REQUESTS]) for _ in range(clients)))
    latencies: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    await asyncio.gather(*(_client(port, payloads, counter, end, latencies, [MAX_REQUESTS // clients])
                           for _ in range(clients)))
    return time.perf_counter() - t0, latencies


def _runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def block(srv: "Server", payloads: list[bytes], clients: int, seconds: float, start: int,
          warm_s: float) -> tuple[float, list[float], float]:
    """One measured block: (seconds, latencies, the server process's CPU seconds meanwhile)."""
    import psutil

    proc = psutil.Process(srv.proc.pid)
    if warm_s > 0:  # not measured, nor its CPU
        _runner()(_load(srv.port, payloads, clients, warm_s, start + MAX_PAYLOADS // 2, 0.0))
    cpu0 = sum(proc.cpu_times()[:2])
    took, lat = _runner()(_load(srv.port, payloads, clients, seconds, start, 0.0))
    return took, lat, sum(proc.cpu_times()[:2]) - cpu0


def measure_ab(servers: dict[bool, "Server"], texts: list[str], clients: int, seconds: float,
               rounds: int) -> dict[bool, dict[str, float]]:
    """Micro-batched and unbatched servers measured in alternating blocks (`rounds` each, `seconds`
    in all per server), so both see the same background load on a shared machine; the warm-up
    before each block is not measured (nor its CPU)."""
    payloads = [_request(0, f"{texts[i % len(texts)]} #{i}") for i in range(MAX_PAYLOADS)]
    got = {b: {"took": 0.0, "lat": [], "cpu": 0.0} for b in servers}
    start = 0
    for r in range(rounds):
        for batching in (sorted(servers, reverse=True) if r % 2 == 0 else sorted(servers)):
            took, lat, cpu = block(servers[batching], payloads, clients, seconds / rounds, start, 0.5)
            start += len(lat) + 4000
            g = got[batching]
            g["took"] += took
            g["lat"] += lat
            g["cpu"] += cpu
    out = {}
    for batching, g in got.items():
        lat_ms = np.array(g["lat"]) * 1000
        out[batching] = {"rps": len(lat_ms) / g["took"], "p50": float(np.percentile(lat_ms, 50)),
                         "p99": float(np.percentile(lat_ms, 99)), "n": len(lat_ms),
                         "cpu_ms": 1000 * g["cpu"] / max(len(lat_ms), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per setting and server")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating blocks per setting (batched, unbatched, unbatched, batched, ...)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--only", choices=("tfidf", "minilm"), action="append")
    args = ap.parse_args()
    which = args.only or ["tfidf", "minilm"]
    print(f"# serve on 127.0.0.1, {os.cpu_count()} cores, {args.seconds:g} s per setting and server in "
          f"{args.rounds} alternating blocks; client and server share the cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundles, texts = make_bundles(Path(tmp), which)
        rows = []
        for name in which:
            servers = {b: Server(bundles[name], b) for b in (True, False)}
            try:
                for srv in servers.values():
                    srv.wait_ready()
                for c in args.clients:
                    got = measure_ab(servers, texts, c, args.seconds, args.rounds)
                    load = os.getloadavg()[0]
                    for batching in (True, False):
                        r = got[batching]
                        rows.append((name, batching, c, r))
                        print(f"{name:7s} batching={'on ' if batching else 'off'} clients={c:3d}: "
                              f"{r['rps']:7.1f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
                              f"server CPU {r['cpu_ms']:5.2f} ms/request  ({r['n']} requests; load average "
                              f"{load:.1f})", flush=True)
            finally:
                for srv in servers.values():
                    srv.stop()
        print("\nmodel    clients  batched req/s  unbatched req/s  ratio  batched p50/p99 ms  unbatched p50/p99 ms"
              "  server CPU ms/req batched / unbatched (ratio)")
        by = {(n, b, c): r for n, b, c, r in rows}
        for name in which:
            for c in args.clients:
                on, off = by[(name, True, c)], by[(name, False, c)]
                print(f"{name:7s}  {c:7d}  {on['rps']:13.1f}  {off['rps']:15.1f}  {on['rps'] / off['rps']:5.2f}  "
                      f"{on['p50']:8.2f} / {on['p99']:7.2f}  {off['p50']:9.2f} / {off['p99']:7.2f}"
                      f"  {on['cpu_ms']:8.2f} / {off['cpu_ms']:6.2f} ({off['cpu_ms'] / on['cpu_ms']:.2f}x)")
        print("\nServer CPU per request is what the load of other processes changes least: on 2 cores of its own "
              "a server could answer about 2000 / (CPU ms per request) req/s, less the client's share.")


if __name__ == "__main__":
    main()

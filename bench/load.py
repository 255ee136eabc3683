"""Load test of POST /v1/generate: N concurrent clients on loopback for D seconds,
in six modes in one run: without micro-batching and with it, each with generated
adapters stored as weights (blobs) and as recipes (registry.recipes), all with the
service's defaults; then micro-batching with recipes again, one batch at a time on
every CPU (LORAMINT_BATCH_WORKERS=1) instead of the default one batch per CPU at
once, and with one server process per CPU (``serve --workers``), each generating
one batch at a time on its CPU.

For each mode it starts a real server (``loramint serve``) on a scratch copy of
the registry (the database copied, the content-addressed blobs hard-linked, so
the adapters the run registers never reach the real registry), waits for it,
runs the clients (each request a new description and seed), and reports
requests/s, p50/p99 latency, errors, the bytes the registry grew by per
generated adapter (database, with its write-ahead log checkpointed, plus blobs),
the cores the clients themselves took (they share the machine), and the cores the
server's processes took.

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60] [--base-model M]

Needs a trained SG-LoRA generator for the base model in $LORAMINT_HOME.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from registry.settings import Settings

DESCRIPTIONS = [
    "Does this dictionary definition describe a kind of {}? Answer yes or no.",
    "Is this sentence about {}? Answer yes or no.",
    "Decide whether the text talks about {}. Answer yes or no.",
]
TOPICS = ["a fish", "a tool", "weather", "music", "a bird", "sports", "food", "a vehicle"]


def scratch_home(home: Path, dest: Path) -> None:
    """Copy the SQLite registry, hard-link its immutable blobs, share the model cache."""
    dest.mkdir(parents=True)
    src = sqlite3.connect(home / "registry.db")
    out = sqlite3.connect(dest / "registry.db")
    src.backup(out)  # a consistent copy even while another process writes
    src.close()
    out.close()
    shutil.copytree(home / "blobs", dest / "blobs", copy_function=os.link)


def reader_key(home: Path) -> str:
    """A new reader API key in the registry under ``home`` (through the CLI)."""
    keygen = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "--role", "reader", "--json"],
        env=os.environ | {"LORAMINT_HOME": str(home)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(json.loads(keygen.stdout)["key"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    home: Path,
    models: Path,
    window_ms: float,
    storage: str = "recipe",
    workers: int = 0,
    processes: int = 1,
    threads: int = 0,
) -> tuple[subprocess.Popen[bytes], str]:
    """``workers``, ``threads``: LORAMINT_BATCH_WORKERS and LORAMINT_BATCH_THREADS (0: the
    service's default, or the threads this environment sets); ``processes``: ``serve
    --workers``. Returns once every process answers /health."""
    port = free_port()
    env = os.environ | {
        "LORAMINT_HOME": str(home),
        "LORAMINT_MODEL_CACHE": str(models),
        "LORAMINT_BATCH_WINDOW_MS": str(window_ms),
        "LORAMINT_BATCH_WORKERS": str(workers),
        "LORAMINT_GENERATED_STORAGE": storage,
        "LORAMINT_API_RATE": "100000",
        "LORAMINT_API_BURST": "100000",
    }
    env.pop("LORAMINT_DATABASE_URL", None)
    if threads:
        env["LORAMINT_BATCH_THREADS"] = str(threads)
    log = (home.parent / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-worker",
         "--log-level", "warning", "--workers", str(processes)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if wait_serving(proc, url, processes, timeout=180):
        return proc, url
    proc.kill()
    raise SystemExit("server did not start")


def wait_serving(proc: subprocess.Popen[Any], url: str, processes: int, timeout: float) -> bool:
    """Whether all ``processes`` of the server ``proc`` at ``url`` answered /health within
    ``timeout`` seconds (False as soon as ``proc`` exits). Each try is a new connection,
    which any process that has started may take: a process takes connections once it is
    warm, and clients' connections, all opened at once, must find every process taking
    them (``/health`` names the process that answered)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                seen.add(r.json()["process"])
                if len(seen) >= processes:
                    return True
                continue  # another connection may reach another process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


class Connection:
    """One client's keep-alive HTTP/1.1 connection, written by hand: the clients share
    the machine with the server, and httpx took about 16 ms of CPU a request. This one
    writes a prepared request and reads the status line, the headers and a
    Content-Length or chunked body."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.headers = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        """POST ``body``; the response's status (its body is read and dropped)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        start = f"POST {path} HTTP/1.1\r\n".encode()
        sized = f"Content-Length: {len(body)}\r\n\r\n".encode()
        self.writer.write(start + self.headers + sized + body)
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        else:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_clients(
    url: str, key: str, base_model: str, clients: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.monotonic() + seconds
    rng = random.Random(0)
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80

    async def one_client(i: int) -> None:
        conn = Connection(host, port, key)
        n = 0
        while time.monotonic() < stop:
            topic = rng.choice(TOPICS)
            desc = rng.choice(DESCRIPTIONS).format(topic) + f" (client {i}, request {n})"
            body = {"description": desc, "base_model": base_model, "seed": i * 100_000 + n}
            n += 1
            t0 = time.perf_counter()
            try:
                code = str(
                    await asyncio.wait_for(
                        conn.post("/v1/generate", json.dumps(body).encode()), 120
                    )
                )
            except (
                OSError,
                EOFError,
                ValueError,
                IndexError,
                TimeoutError,
                asyncio.LimitOverrunError,
            ) as exc:
                code = type(exc).__name__  # the connection is dropped and opened again
                conn.close()
            if code == "201":
                latencies.append(time.perf_counter() - t0)
            else:
                errors[code] = errors.get(code, 0) + 1
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "wall_s": round(wall, 1),
    }


def stored_bytes(home: Path) -> int:
    """Bytes the registry under ``home`` takes: its database (write-ahead log folded in
    first) and its blobs."""
    db = sqlite3.connect(home / "registry.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    files = [home / "registry.db", home / "registry.db-wal", *(home / "blobs").rglob("*")]
    return sum(f.stat().st_size for f in files if f.is_file())


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid`` and the processes below it (the
    server and its worker processes), read from /proc; None where there is none."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").exists():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # from field 3, the state, on
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree.update(frontier)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def mean_batch(metrics: str) -> float | None:
    """Mean generation batch size from the server's Prometheus text."""
    values = {}
    for line in metrics.splitlines():
        for part in ("_sum", "_count"):
            if line.startswith(f"loramint_generation_batch_size{part} "):
                values[part] = float(line.split()[-1])
    if not values.get("_count"):
        return None
    return round(values["_sum"] / values["_count"], 2)


CPUS = os.cpu_count() or 1
# name -> (batching, storage, LORAMINT_BATCH_WORKERS and LORAMINT_BATCH_THREADS (0: the
# defaults), serve --workers)
MODES = {
    "no batching, weights": (False, "weights", 0, 0, 1),
    "no batching, recipes": (False, "recipe", 0, 0, 1),
    "micro-batching, weights": (True, "weights", 0, 0, 1),
    "micro-batching, recipes": (True, "recipe", 0, 0, 1),
    # the default generates one batch per CPU at once, each on one thread; this mode one
    # batch at a time on every CPU
    "micro-batching, recipes, one batch at a time": (True, "recipe", 1, CPUS, 1),
    # one server process per CPU (serve --workers), each with one batch at a time
    "micro-batching, recipes, a process per CPU": (True, "recipe", 0, 0, CPUS),
}


def run_mode(args: argparse.Namespace, models: Path, mode: str) -> dict[str, Any]:
    """One mode: a fresh scratch registry and server, the clients, what it measured."""
    batching, storage, workers, threads, processes = MODES[mode]
    with tempfile.TemporaryDirectory(prefix="loramint-load-") as tmp:
        home = Path(tmp) / "home"
        scratch_home(args.home, home)
        key = reader_key(home)
        window = args.window_ms if batching else 0.0
        proc, url = start_server(home, models, window, storage, workers, processes, threads)
        try:
            warm = httpx.post(
                f"{url}/v1/generate",
                json={"description": "warm up", "base_model": args.base_model},
                headers={"Authorization": f"Bearer {key}"}, timeout=300,
            )  # fmt: skip
            if warm.status_code != 201:
                tail = (home.parent / "server.log").read_text()[-3000:]
                raise SystemExit(f"warm-up failed: {warm.status_code} {warm.text}\n{tail}")
            before = stored_bytes(home)
            cpu0, server0, t0 = os.times(), tree_cpu_seconds(proc.pid), time.perf_counter()
            result = asyncio.run(run_clients(url, key, args.base_model, args.clients, args.seconds))
            cpu1, server1 = os.times(), tree_cpu_seconds(proc.pid)
            wall = time.perf_counter() - t0
            used = cpu1.user - cpu0.user + cpu1.system - cpu0.system
            result["client_cpu"] = round(used / wall, 2)  # cores the clients took
            result["server_cpu"] = (  # cores the server's processes took
                None if server0 is None or server1 is None else round((server1 - server0) / wall, 2)
            )
            result["mean_batch"] = mean_batch(httpx.get(f"{url}/metrics").text)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        grown = stored_bytes(home) - before
        result["bytes_per_adapter"] = round(grown / max(result["requests"], 1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--window-ms", type=float, default=10)
    ap.add_argument(
        "--mode",
        action="append",
        choices=list(MODES),
        help="run only these modes (repeatable; default: all six)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the modes this many times, alternating"
    )
    ap.add_argument(
        "--home",
        type=Path,
        default=Settings.from_env().home,
    )
    args = ap.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.repeat < 1:
        raise SystemExit("--clients, --seconds and --repeat must be positive")
    models = Settings.from_env(dict(os.environ) | {"LORAMINT_HOME": str(args.home)}).model_cache
    modes = args.mode or list(MODES)
    runs: list[tuple[str, str, dict[str, Any]]] = []  # (mode, row name, result)
    for rep in range(args.repeat):
        for mode in modes:
            result = run_mode(args, models, mode)
            name = mode if args.repeat == 1 else f"{mode} (run {rep + 1})"
            runs.append((mode, name, result))
            print(name, json.dumps(result), flush=True)
    print(
        "\n| mode | clients | s | requests/s | p50 ms | p99 ms | errors | mean batch "
        "| bytes per adapter | client CPU | server CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for _, name, r in runs:
        print(
            f"| {name} | {args.clients} | {args.seconds:.0f} | {r['rps']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {sum(r['errors'].values())} | {r['mean_batch']} | "
            f"{r['bytes_per_adapter']:,} | {r['client_cpu']} | {r['server_cpu']} |"
        )
    mean = {mode: statistics.fmean(r["rps"] for m, _, r in runs if m == mode) for mode in modes}
    if "no batching, weights" in mean:
        base = mean["no batching, weights"]
        for mode in (
            "micro-batching, weights",
            "micro-batching, recipes",
            "micro-batching, recipes, a process per CPU",
        ):
            if mode in mean:
                print(
                    f"throughput ratio ({mode} / no batching, weights): "
                    f"{mean[mode] / max(base, 1e-9):.2f}x"
                )
    if args.repeat > 1:
        for mode in modes:
            print(f"mean requests/s over {args.repeat} runs, {mode}: {mean[mode]:.2f}")


if __name__ == "__main__":
    main()

"""Memory under hostile generate requests: does the server's RSS stay put?

Starts a real server (``loramint serve``) on a fresh scratch home, warms it up,
then sends, with a few concurrent clients, N ``POST /v1/generate`` requests
whose ``base_model`` is a distinct 1 MB string each, and N more whose
``base_model`` is a distinct name short enough to pass the body's bounds (these
reach the micro-batcher, which keys its queues by base model). It reports the
server's resident memory (the whole process tree) after the warm-up and after
each phase, and the answers' status codes.

    .venv/bin/python bench/memory.py [--requests 1000] [--clients 8] [--mb 1]

Target: the RSS after both phases within 50 MB of the RSS after the warm-up.
Needs nothing registered: every request is refused (400 or 404).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import reader_key, start_server  # noqa: E402

TARGET_MB = 50
DESCRIPTION = "Does the text mention the moon? Answer yes or no."


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB (from /proc)."""
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        total_kb += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
            0,
        )
        todo.extend(int(c) for c in children)
    return total_kb / 1024


async def send_all(url: str, key: str, bodies: list[bytes], clients: int) -> Counter[str]:
    codes: Counter[str] = Counter()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                try:
                    r = await client.post("/v1/generate", content=body)
                    codes[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return codes


def bodies(n: int, chars: int, tag: str) -> list[bytes]:
    """``n`` request bodies, each naming a different ``chars``-long base model."""
    out = []
    for i in range(n):
        stem = f"{tag}-{i}-"
        name = stem + "m" * (chars - len(stem))
        out.append(json.dumps({"description": DESCRIPTION, "base_model": name}).encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per phase")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--mb", type=float, default=1.0, help="size of each long base_model (MB)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.requests < 1 or args.clients < 1 or not 0 < args.mb <= 8:
        ap.error("--requests and --clients must be >= 1, --mb in (0, 8]")
    long_chars = int(args.mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="loramint-memory-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        key = reader_key(home)
        proc, url = start_server(home, Path(tmp) / "models", window_ms=20)
        try:
            phases: dict[str, dict[str, object]] = {}
            warm = asyncio.run(
                send_all(url, key, bodies(50, long_chars, "warm") + bodies(50, 60, "w"), 4)
            )
            start = tree_rss_mb(proc.pid)
            phases["warm-up (100)"] = {"rss_mb": round(start, 1), "codes": dict(warm)}
            for label, chars in ((f"{args.mb:g} MB base_model", long_chars), ("300-char", 300)):
                codes = asyncio.run(
                    send_all(url, key, bodies(args.requests, chars, label[:3]), args.clients)
                )
                phases[f"{args.requests} x {label}"] = {
                    "rss_mb": round(tree_rss_mb(proc.pid), 1),
                    "codes": dict(codes),
                }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    end = float(list(phases.values())[-1]["rss_mb"])  # type: ignore[arg-type]
    growth = end - start
    result = {
        "phases": phases,
        "growth_mb": round(growth, 1),
        "target_mb": TARGET_MB,
        "within_target": growth <= TARGET_MB,
        "pid_rss_source": "/proc/<pid>/status VmRSS, server process tree",
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'phase':<28} {'RSS MB':>8}  status codes")
    for label, row in phases.items():
        print(f"{label:<28} {row['rss_mb']:>8}  {row['codes']}")
    verdict = "within" if growth <= TARGET_MB else "OVER"
    print(f"growth after warm-up: {growth:+.1f} MB ({verdict} the {TARGET_MB} MB target)")


if __name__ == "__main__":
    main()

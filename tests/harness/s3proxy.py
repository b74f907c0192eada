"""An HTTP proxy in front of an S3-compatible server that makes it behave like S3 over a
network: it adds latency per kind of request, injects 503 SlowDown answers and delays
(a brownout), and counts every request by the kind S3 bills it as.

Run as its own process (so a loaded test or benchmark process does not slow it):

    python -m harness.s3proxy --upstream http://127.0.0.1:9000 --put-delay-ms 30

It prints `listening on PORT` once it serves. Requests under `/_proxy/` control it (no S3
bucket name starts with `_`):

    GET  /_proxy/stats            {"put": n, "get": n, "list": n, "delete": n, "faults": n, ...}
    POST /_proxy/config           JSON: {"delay_ms": {"put": 30, ...}, "fault_rate": 0.5,
                                   "fault_delay_ms": 1500}; keys left out keep their value
    POST /_proxy/reset            zeroes the counters

`S3Proxy` below starts one and wraps the control calls for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

KINDS = ("put", "get", "list", "delete", "head")
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
# Hop-by-hop headers are the proxy's own business, not the upstream's.
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "content-length", "host"}


def kind_of(method: str, path: str, query: str) -> str:
    """The request as S3 bills it: PUT/POST/COPY/LIST are one tier, GET another."""
    if method == "DELETE" or (method == "POST" and "delete" in query.split("&")):
        return "delete"
    if method in ("PUT", "POST"):
        return "put"
    if method == "HEAD":
        return "head"
    # A GET on the bucket itself (path /bucket or /bucket/) is a listing.
    parts = [p for p in path.split("/") if p]
    if len(parts) <= 1:
        return "list"
    return "get"


class Proxy:
    def __init__(self, upstream: str, delays: dict[str, float]):
        self.upstream = upstream.rstrip("/")
        self.delay_ms = {k: 0.0 for k in KINDS} | delays
        self.fault_rate = 0.0
        self.fault_delay_ms = 0.0
        self.counts = {k: 0 for k in KINDS} | {"faults": 0, "bytes_in": 0, "bytes_out": 0}
        self.session = None

    async def handle(self, request):
        from aiohttp import web

        if request.path.startswith("/_proxy/"):
            return await self.control(request)
        kind = kind_of(request.method, request.path, request.query_string)
        body = await request.read()
        self.counts[kind] += 1
        self.counts["bytes_in"] += len(body)
        delay = self.delay_ms[kind]
        if self.fault_rate > 0 and random.random() < self.fault_rate:
            self.counts["faults"] += 1
            await asyncio.sleep(delay / 1000)
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        await asyncio.sleep((delay + self.fault_delay_ms) / 1000)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        url = self.upstream + request.path_qs
        async with self.session.request(request.method, url, headers=headers, data=body,
                                        allow_redirects=False, auto_decompress=False) as up:
            payload = await up.read()
            self.counts["bytes_out"] += len(payload)
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            return web.Response(status=up.status, headers=out, body=payload)

    async def control(self, request):
        from aiohttp import web

        if request.path == "/_proxy/stats":
            state = dict(self.counts, delay_ms=self.delay_ms, fault_rate=self.fault_rate,
                         fault_delay_ms=self.fault_delay_ms)
            return web.json_response(state)
        if request.path == "/_proxy/reset" and request.method == "POST":
            for k in self.counts:
                self.counts[k] = 0
            return web.json_response({})
        if request.path == "/_proxy/config" and request.method == "POST":
            cfg = await request.json()
            for k, v in cfg.get("delay_ms", {}).items():
                if k not in KINDS:
                    return web.json_response({"error": f"unknown kind {k}"}, status=400)
                self.delay_ms[k] = float(v)
            self.fault_rate = float(cfg.get("fault_rate", self.fault_rate))
            self.fault_delay_ms = float(cfg.get("fault_delay_ms", self.fault_delay_ms))
            return web.json_response({})
        return web.json_response({"error": "no such control"}, status=404)


async def serve(args) -> None:
    import aiohttp
    from aiohttp import web

    delays = {"put": args.put_delay_ms, "get": args.get_delay_ms, "list": args.list_delay_ms,
              "delete": args.delete_delay_ms, "head": args.get_delay_ms}
    proxy = Proxy(args.upstream, delays)
    connector = aiohttp.TCPConnector(limit=0)
    proxy.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="the S3-compatible server, e.g. http://127.0.0.1:9000")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--put-delay-ms", type=float, default=0.0, help="added to PUT and POST (S3 Standard: ~30)")
    ap.add_argument("--get-delay-ms", type=float, default=0.0, help="added to GET and HEAD")
    ap.add_argument("--list-delay-ms", type=float, default=0.0)
    ap.add_argument("--delete-delay-ms", type=float, default=0.0)
    asyncio.run(serve(ap.parse_args()))


class S3Proxy:
    """A proxy process in front of `upstream`, with its control calls."""

    def __init__(self, upstream: str, log_path: Path, put_delay_ms: float = 0.0,
                 get_delay_ms: float = 0.0):
        here = Path(__file__).resolve().parent.parent
        cmd = [sys.executable, "-m", "harness.s3proxy", "--upstream", upstream,
               "--put-delay-ms", str(put_delay_ms), "--get-delay-ms", str(get_delay_ms)]
        self._log = open(log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(cmd, cwd=here, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"s3 proxy did not start; see {log_path}")
        self.port = int(line.split()[-1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data,
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def stats(self) -> dict:
        return self._call("/_proxy/stats")

    def reset(self) -> None:
        self._call("/_proxy/reset", {})

    def configure(self, delay_ms: dict[str, float] | None = None, fault_rate: float | None = None,
                  fault_delay_ms: float | None = None) -> None:
        body: dict = {}
        if delay_ms is not None:
            body["delay_ms"] = delay_ms
        if fault_rate is not None:
            body["fault_rate"] = fault_rate
        if fault_delay_ms is not None:
            body["fault_delay_ms"] = fault_delay_ms
        self._call("/_proxy/config", body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    main()

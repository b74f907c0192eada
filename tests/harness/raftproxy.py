"""Relays in front of every node's Raft port that can cut one node off from its peers
while its Kafka port stays reachable: a network partition of the metadata Raft.

Each node listens for Raft traffic on a port of its own (`--raft-listen`) and is known
to its peers by its relay's address (`--raft-advertise`, its `--controllers` entry), so
every Raft connection, whoever opens it, passes through the relay of the node it goes
to. That alone can cut a node's *incoming* connections. To cut its *outgoing* ones too,
the cluster runs with a cluster secret (`--cluster-secret-file`): every Raft connection
then opens with the handshake HELLO, `"STAH" | version | role | node id (u64 BE) |
nonce` (src/metadata/raft/auth.rs), which names the node that opened it.

`partition(n)` blackholes every connection to node n's relay and every connection node n
opened to another relay, open ones and new ones alike: the relay keeps reading and
discards what it reads, so the sender sees no error, only silence (a network dropping
packets, not one refusing connections), and its calls time out. `heal(n)` resets the
blackholed connections (their byte streams lost data, so they cannot be resumed) and
relays new ones again.

The relays run in a process of their own (asyncio), so that a busy test process (client
threads, a probe in a tight loop) cannot slow the Raft traffic down. It reads commands
on stdin and answers each with one line on stdout:

    add ID TARGET_PORT   -> "port PORT"     a relay for node ID in front of TARGET_PORT
    partition ID         -> "ok"
    heal ID              -> "ok"
    stats                -> "stats JSON"

`RaftRelays` below starts one and wraps the commands:

    relays = RaftRelays(log_path)
    port = relays.add(node_id=1, target_port=raft_listen_port)   # the relay's port
    relays.partition(1); ...; relays.heal(1)
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

HELLO_LEN = 4 + 1 + 1 + 8 + 32
MAGIC = b"STAH"


class _Conn:
    """One relayed connection: from node `source` (None: unknown) to node `dest`."""

    def __init__(self, source, dest, client_writer, upstream_writer):
        self.source = source
        self.dest = dest
        self.writers = [w for w in (client_writer, upstream_writer) if w is not None]
        self.blackholed = upstream_writer is None


class Relays:
    def __init__(self):
        self.targets: dict[int, int] = {}
        self.conns: set[_Conn] = set()
        self.partitioned: set[int] = set()
        self.dropped = 0
        self.relayed = 0

    def cut(self, c: _Conn) -> bool:
        return c.dest in self.partitioned or c.source in self.partitioned

    async def add(self, node_id: int, target_port: int) -> int:
        self.targets[node_id] = target_port
        server = await asyncio.start_server(
            lambda r, w: self.serve(node_id, r, w), "127.0.0.1", 0, reuse_address=True)
        return server.sockets[0].getsockname()[1]

    def partition(self, node_id: int) -> None:
        self.partitioned.add(node_id)
        for c in self.conns:
            if self.cut(c) and not c.blackholed:
                c.blackholed = True
                self.dropped += 1

    def heal(self, node_id: int) -> None:
        self.partitioned.discard(node_id)
        dead = [c for c in self.conns if c.blackholed and not self.cut(c)]
        for c in dead:
            self.conns.discard(c)
            for w in c.writers:
                w.transport.abort()  # RST: the stream lost data and cannot go on

    async def serve(self, dest: int, reader, writer) -> None:
        hello = b""
        try:
            while len(hello) < HELLO_LEN:
                chunk = await asyncio.wait_for(reader.read(HELLO_LEN - len(hello)), 5)
                if not chunk:
                    break
                hello += chunk
        except (asyncio.TimeoutError, OSError):
            pass
        source = None
        if len(hello) >= 14 and hello[:4] == MAGIC and hello[5] == 0:
            source = struct.unpack(">Q", hello[6:14])[0]
        up_writer = None
        if not (dest in self.partitioned or source in self.partitioned):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.targets[dest])
                if hello:
                    up_writer.write(hello)
                    await up_writer.drain()
            except OSError:
                writer.transport.abort()
                return
        conn = _Conn(source, dest, writer, up_writer)
        self.conns.add(conn)
        if conn.blackholed or self.cut(conn):
            conn.blackholed = True
            self.dropped += 1
        else:
            self.relayed += 1
        pumps = [self.pump(conn, reader, up_writer)]
        if up_writer is not None:
            pumps.append(self.pump(conn, up_reader, writer))
        await asyncio.gather(*pumps, return_exceptions=True)
        if not conn.blackholed:
            self.conns.discard(conn)
            for w in conn.writers:
                w.close()

    @staticmethod
    async def pump(conn: _Conn, src, dst) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if conn.blackholed or dst is None:
                    continue  # dropped on the floor
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not conn.blackholed and dst is not None:
                try:
                    dst.write_eof()
                except (OSError, RuntimeError):
                    pass


async def main() -> None:
    relays = Relays()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = (await reader.readline()).decode().split()
        if not line:
            return  # stdin closed: the test is gone
        cmd, args = line[0], [int(a) for a in line[1:]]
        if cmd == "add":
            print(f"port {await relays.add(args[0], args[1])}", flush=True)
        elif cmd == "partition":
            relays.partition(args[0])
            print("ok", flush=True)
        elif cmd == "heal":
            relays.heal(args[0])
            print("ok", flush=True)
        elif cmd == "stats":
            print("stats " + json.dumps({"dropped": relays.dropped, "relayed": relays.relayed,
                                         "open": len(relays.conns)}), flush=True)
        else:
            print(f"error unknown command {cmd}", flush=True)


class RaftRelays:
    """The relay process and its commands."""

    def __init__(self, log_path: Path):
        here = Path(__file__).resolve().parent.parent
        self._log = open(log_path, "ab", buffering=0)
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.raftproxy"], cwd=here,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1)
        self._lock = threading.Lock()
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"raft relays did not start; see {log_path}")
        self.ports: dict[int, int] = {}

    def _command(self, line: str) -> str:
        with self._lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"raft relays: {line!r} -> {answer!r}")
        return answer

    def add(self, node_id: int, target_port: int) -> int:
        port = int(self._command(f"add {node_id} {target_port}").split()[1])
        self.ports[node_id] = port
        return port

    def partition(self, node_id: int) -> None:
        self._command(f"partition {node_id}")

    def heal(self, node_id: int) -> None:
        self._command(f"heal {node_id}")

    def stats(self) -> dict:
        return json.loads(self._command("stats").split(" ", 1)[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    asyncio.run(main())

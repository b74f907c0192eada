"""Tiny hand-rolled Kafka wire-format helpers for raw-socket tests.

Only non-flexible request versions (request header v1, response header v0):
ApiVersions v0, Metadata v1, Produce v3, Fetch v4, plus a record-batch v2 encoder with a
pure-Python CRC-32C (Castagnoli), and well-formed requests of any API and version built
from the broker's generated schema table (for fuzzing).  Also the Java murmur2 used by Kafka's
default / legacy partitioners.
"""

from __future__ import annotations

import re
import socket
import struct
import time

# ------------------------------------------------------------------ CRC-32C
_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC32C_POLY if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283, "CRC-32C self-check failed"

# ------------------------------------------------------------------ murmur2


def murmur2(data: bytes) -> int:
    """Kafka's Java murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as signed int32."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    mask = 0xFFFFFFFF
    h = (seed ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = struct.unpack_from("<I", data, i * 4)[0]
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length & ~3
    rem = length % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def murmur2_partition(key: bytes, num_partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


# ------------------------------------------------------------------ primitives


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(n: int) -> bytes:
    return uvarint(zigzag(n) & 0xFFFFFFFFFFFFFFFF)


def kstring(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def kbytes(b: bytes | None) -> bytes:
    if b is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(b)) + b


# ------------------------------------------------------------------ record batch v2


def encode_record(offset_delta: int, key: bytes | None, value: bytes | None, ts_delta: int = 0) -> bytes:
    body = bytearray()
    body += struct.pack(">b", 0)  # attributes
    body += varint(ts_delta)
    body += varint(offset_delta)
    if key is None:
        body += varint(-1)
    else:
        body += varint(len(key)) + key
    if value is None:
        body += varint(-1)
    else:
        body += varint(len(value)) + value
    body += varint(0)  # headers
    return varint(len(body)) + bytes(body)


def encode_batch(records: list[tuple[bytes | None, bytes | None]], base_timestamp: int | None = None,
                 corrupt_crc: bool = False, ts_deltas: list[int] | None = None) -> bytes:
    """Record batch v2 (magic 2), uncompressed, no producer id; `ts_deltas`: each record's
    timestamp delta from `base_timestamp` (0 by default)."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    deltas = ts_deltas or [0] * len(records)
    recs = b"".join(encode_record(i, k, v, d) for i, ((k, v), d) in enumerate(zip(records, deltas)))
    after_crc = (
        struct.pack(">h", 0)  # attributes
        + struct.pack(">i", len(records) - 1)  # lastOffsetDelta
        + struct.pack(">q", base_timestamp)  # baseTimestamp
        + struct.pack(">q", base_timestamp + max(deltas, default=0))  # maxTimestamp
        + struct.pack(">q", -1)  # producerId
        + struct.pack(">h", -1)  # producerEpoch
        + struct.pack(">i", -1)  # baseSequence
        + struct.pack(">i", len(records))
        + recs
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    # batchLength counts from partitionLeaderEpoch to the end
    after_len = struct.pack(">i", -1) + struct.pack(">b", 2) + struct.pack(">I", crc) + after_crc
    return struct.pack(">q", 0) + struct.pack(">i", len(after_len)) + after_len


# ------------------------------------------------------------------ requests

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_API_VERSIONS = 18


def request(api_key: int, api_version: int, correlation_id: int, body: bytes, client_id: str | None = "strata-raw") -> bytes:
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + kstring(client_id)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def produce_v3_body(topic: str, partition: int, batch: bytes, acks: int = -1, timeout_ms: int = 10000) -> bytes:
    return (
        kstring(None)  # transactional_id
        + struct.pack(">hi", acks, timeout_ms)
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", 1) + struct.pack(">i", partition) + kbytes(batch)
    )


def metadata_v1_body(topics: list[str] | None) -> bytes:
    if topics is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(topics)) + b"".join(kstring(t) for t in topics)


# ------------------------------------------------------------------ responses


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _unpack(self, fmt: str):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def i8(self):
        return self._unpack(">b")

    def i16(self):
        return self._unpack(">h")

    def i32(self):
        return self._unpack(">i")

    def i64(self):
        return self._unpack(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_api_versions_v0(body: bytes) -> dict:
    r = Reader(body)
    err = r.i16()
    n = r.i32()
    keys = {}
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        keys[k] = (lo, hi)
    return {"error_code": err, "api_keys": keys}


def parse_produce_v3(body: bytes) -> list[dict]:
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            out.append({
                "topic": name,
                "partition": r.i32(),
                "error_code": r.i16(),
                "base_offset": r.i64(),
                "log_append_time": r.i64(),
            })
    r.i32()  # throttle_time_ms
    return out


def parse_produce_v8(body: bytes) -> list[dict]:
    """Produce v8: v3's fields, the log start offset (v5), KIP-467's record errors and
    error message (v8)."""
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = {"topic": name, "partition": r.i32(), "error_code": r.i16(), "base_offset": r.i64(),
                 "log_append_time": r.i64(), "log_start_offset": r.i64()}
            p["record_errors"] = [(r.i32(), r.string()) for _ in range(r.i32())]
            p["error_message"] = r.string()
            out.append(p)
    r.i32()  # throttle_time_ms
    return out


# ------------------------------------------------------------------ socket helpers


def connect(bootstrap: str, timeout: float = 10.0) -> socket.socket:
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """Read one response frame; returns (correlation_id, body after header v0)."""
    size = struct.unpack(">i", recv_exact(s, 4))[0]
    assert 4 <= size < 100 * 1024 * 1024, f"bad response size {size}"
    frame = recv_exact(s, size)
    return struct.unpack(">i", frame[:4])[0], frame[4:]


def roundtrip(bootstrap: str, api_key: int, api_version: int, body: bytes, correlation_id: int = 7) -> bytes:
    with connect(bootstrap) as s:
        s.sendall(request(api_key, api_version, correlation_id, body))
        cid, resp = read_response(s)
        assert cid == correlation_id, f"correlation id {cid} != {correlation_id}"
        return resp


def wait_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Wait for the peer to close. Returns any bytes received before EOF.

    Raises AssertionError if the connection is still open after `timeout`."""
    s.settimeout(timeout)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout}s (received {bytes(got[:64])!r})")
        s.settimeout(remaining)
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got)
        except socket.timeout:
            raise AssertionError(f"connection still open after {timeout}s (received {bytes(got[:64])!r})")
        if not chunk:
            return bytes(got)
        got += chunk


# ------------------------------------------------------------------ kafkajs LegacyPartitioner hash
# kafkajs' legacy murmur2 is *not* Java-compatible: it multiplies in IEEE doubles
# (no Math.imul) and loops ceil(len/4) times.  Emulated here bit-for-bit so the
# kafkajs test can check the partition independently of kafkajs itself.


def _js_toint32(x: float) -> int:
    if x != x or x in (float("inf"), float("-inf")):
        return 0
    n = int(x) & 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def _js_touint32(x: float) -> int:
    return _js_toint32(x) & 0xFFFFFFFF


def kafkajs_legacy_murmur2(data: bytes) -> int:
    M = 0x5BD1E995
    length = len(data)

    def byte(i):
        return data[i] if i < length else 0  # JS: undefined & 0xff == 0

    h = _js_toint32(0x9747B28C) ^ length
    i = 0
    while i < length / 4:
        i4 = i * 4
        k = float(byte(i4) + (byte(i4 + 1) << 8) + (byte(i4 + 2) << 16) + _js_toint32(byte(i4 + 3) << 24))
        k = k * M
        k = _js_toint32(k) ^ (_js_touint32(k) >> 24)
        k = float(k) * M
        h = float(h) * M
        h = _js_toint32(h) ^ _js_toint32(k)
        i += 1
    rem = length % 4
    base = length & ~3
    if rem == 3:
        h = _js_toint32(h) ^ _js_toint32((data[base + 2] & 0xFF) << 16)
    if rem >= 2:
        h = _js_toint32(h) ^ _js_toint32((data[base + 1] & 0xFF) << 8)
    if rem >= 1:
        h = _js_toint32(h) ^ (data[base] & 0xFF)
        h = float(h) * M
    h = _js_toint32(h) ^ (_js_touint32(h) >> 13)
    h = float(h) * M
    h = _js_toint32(h) ^ (_js_touint32(h) >> 15)
    return h


def kafkajs_legacy_partition(key: bytes, num_partitions: int) -> int:
    return (kafkajs_legacy_murmur2(key) & 0x7FFFFFFF) % num_partitions


# ------------------------------------------------------------------ any request, from the schema table
# src/protocol/bounds/schema.rs (generated from kafka-protocol's decoders) lists the wire
# layout of every request message; these helpers build a well-formed body of any API and
# version from it, for fuzzing.


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis/bracket group opening at text[start]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    raise ValueError("unbalanced schema text")


def _ops(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    while (i := text.find("op(", pos)) >= 0:
        end = _balanced(text, i + 2)
        mask, kind = text[i + 3:end - 1].split(", ", 1)
        out.append((int(mask, 16), kind))
        pos = end
    return out


def load_request_schema(path) -> dict:
    """{'structs': [...], 'requests': {api_key_number: struct index}} from schema.rs."""
    text = open(path).read()
    structs = []
    for m in re.finditer(r"StructDef \{", text):
        end = _balanced(text, m.end() - 1)
        body = text[m.end():end - 1]
        fields_at = body.index("fields: &[") + len("fields: &")
        tags_at = body.index("tags: &[") + len("tags: &")
        tags = []
        tag_text = body[tags_at:_balanced(body, tags_at)]
        for t in re.finditer(r"TagDef \{ tag: (\d+), versions: (0x[0-9a-f]+), fields: &", tag_text):
            ops_end = _balanced(tag_text, t.end())
            tags.append((int(t.group(1)), int(t.group(2), 16), _ops(tag_text[t.end():ops_end])))
        structs.append({
            "name": re.search(r'name: "([^"]+)"', body).group(1),
            "versions": int(re.search(r"versions: (0x[0-9a-f]+)", body).group(1), 16),
            "flexible": int(re.search(r"flexible: (0x[0-9a-f]+)", body).group(1), 16),
            "fields": _ops(body[fields_at:_balanced(body, fields_at)]),
            "tags": tags,
        })
    requests = {int(n): int(i) for i, n in re.findall(r"\(m::ApiKey::\w+, (\d+)\), // (\d+)", text)}
    return {"structs": structs, "requests": requests}


def _synth_kind(schema, kind: str, bit: int, out: bytearray):
    m = re.fullmatch(r"(Compact)?Array\(Elem::(\w+)\((.*)\)\)", kind)
    if m:
        out += uvarint(3) if m.group(1) else struct.pack(">i", 2)
        elem = f"Struct({m.group(3)})" if m.group(2) == "Struct" else m.group(2)
        for _ in range(2):
            _synth_kind(schema, elem, bit, out)
        return
    m = re.fullmatch(r"(Option)?Struct\((\d+)\)", kind)
    if m:
        if m.group(1):
            out += b"\x01"
        _synth_struct(schema, schema["structs"][int(m.group(2))], bit, out)
        return
    fixed = {"Bool": b"\x01", "Int8": b"\x01", "Int16": struct.pack(">h", 7), "UInt16": struct.pack(">H", 7),
             "Int32": struct.pack(">i", 7), "Int64": struct.pack(">q", 7), "Float64": struct.pack(">d", 1.5),
             "Uuid": b"\x11" * 16, "String": kstring("ab"), "CompactString": uvarint(3) + b"ab",
             "Bytes": kbytes(b"\x01\x02\x03"), "CompactBytes": uvarint(4) + b"\x01\x02\x03"}
    out += fixed[kind]


def _synth_struct(schema, s: dict, bit: int, out: bytearray):
    for mask, kind in s["fields"]:
        if mask & bit:
            _synth_kind(schema, kind, bit, out)
    if s["flexible"] & bit:
        known = [t for t in s["tags"] if t[1] & bit]
        out += uvarint(len(known))
        for tag, _, ops in known:
            value = bytearray()
            for mask, kind in ops:
                if mask & bit:
                    _synth_kind(schema, kind, bit, value)
            out += uvarint(tag) + uvarint(len(value)) + value


def synth_request(schema: dict, api_key: int, version: int, correlation_id: int) -> bytes:
    """A well-formed request frame (size prefix included): two elements per array, short
    strings, every known tagged field; header v2 for flexible versions, else v1."""
    s = schema["structs"][schema["requests"][api_key]]
    bit = 1 << version
    body = bytearray()
    _synth_struct(schema, s, bit, body)
    header = struct.pack(">hhi", api_key, version, correlation_id) + kstring("strata-fuzz")
    if s["flexible"] & bit:
        header += b"\x00"  # no tagged fields in header v2
    payload = header + bytes(body)
    return struct.pack(">i", len(payload)) + payload


def parse_api_versions_ranges(bootstrap: str) -> dict[int, tuple[int, int]]:
    body = roundtrip(bootstrap, API_API_VERSIONS, 0, b"")
    return parse_api_versions_v0(body)["api_keys"]


# ------------------------------------------------------------------ raw batches and Fetch v4


def encode_raw_batch(records_payload: bytes, count: int, attributes: int, base_timestamp: int) -> bytes:
    """Record batch v2 around an already-encoded (possibly compressed) records section."""
    after_crc = (
        struct.pack(">h", attributes)
        + struct.pack(">i", count - 1)
        + struct.pack(">q", base_timestamp) * 2
        + struct.pack(">q", -1) + struct.pack(">h", -1) + struct.pack(">i", -1)
        + struct.pack(">i", count)
        + records_payload
    )
    after_len = struct.pack(">i", -1) + struct.pack(">b", 2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return struct.pack(">q", 0) + struct.pack(">i", len(after_len)) + after_len


def fetch_v4_body(topic: str, partition: int, offset: int, max_bytes: int) -> bytes:
    return (
        struct.pack(">iiii", -1, 500, 1, max_bytes)  # replica, max_wait_ms, min_bytes, max_bytes
        + struct.pack(">b", 0)  # isolation level
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    )


def parse_fetch_v4(body: bytes) -> dict:
    """{(topic, partition): (error_code, high_watermark, records)} of a Fetch v4 response."""
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            part, err, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last stable offset
            for _ in range(max(r.i32(), 0)):  # aborted transactions
                r.i64(), r.i64()
            n = r.i32()
            records = body[r.pos:r.pos + max(n, 0)]
            r.pos += max(n, 0)
            out[(topic, part)] = (err, hw, records)
    return out


# ------------------------------------------------------------------ transactions: Fetch v4 with
# isolation level, ListOffsets v2, FindCoordinator v1 and record-batch headers

API_LIST_OFFSETS = 2
API_FIND_COORDINATOR = 10

READ_UNCOMMITTED = 0
READ_COMMITTED = 1

ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20


def fetch_v4_isolated_body(topic: str, partition: int, offset: int, isolation_level: int,
                           max_bytes: int = 8 << 20, max_wait_ms: int = 100) -> bytes:
    return (
        struct.pack(">iiii", -1, max_wait_ms, 1, max_bytes)  # replica, max_wait_ms, min_bytes, max_bytes
        + struct.pack(">b", isolation_level)
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    )


def parse_fetch_v4_full(body: bytes) -> dict:
    """{(topic, partition): {error_code, high_watermark, last_stable_offset,
    aborted_transactions: [(producer_id, first_offset)] or None, records: bytes}}."""
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            part, err, hw, lso = r.i32(), r.i16(), r.i64(), r.i64()
            n = r.i32()
            aborted = None if n < 0 else [(r.i64(), r.i64()) for _ in range(n)]
            size = r.i32()
            records = body[r.pos:r.pos + max(size, 0)]
            r.pos += max(size, 0)
            out[(topic, part)] = {"error_code": err, "high_watermark": hw, "last_stable_offset": lso,
                                  "aborted_transactions": aborted, "records": records}
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def parse_batch_headers(data: bytes) -> list[dict]:
    """Every complete v2 record batch in a Fetch answer: base_offset, last_offset, attributes,
    producer_id, producer_epoch, base_sequence, count, and (uncompressed batches only) the
    records as [(offset, key, value)].  A control batch's record key is (version i16, type
    i16): type 0 = ABORT, 1 = COMMIT (`control_type`)."""
    out, pos = [], 0
    while pos + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        if end > len(data):
            break  # partial batch at the end
        magic = data[pos + 16]
        attributes, last_delta = struct.unpack_from(">hi", data, pos + 21)
        pid, epoch, base_seq, count = struct.unpack_from(">qhii", data, pos + 43)
        b = {"base_offset": base, "last_offset": base + last_delta, "attributes": attributes,
             "magic": magic, "producer_id": pid, "producer_epoch": epoch, "base_sequence": base_seq,
             "count": count, "records": None, "control_type": None}
        if magic == 2 and attributes & 0x07 == 0:  # uncompressed: decode the records
            recs, p = [], pos + 61
            for _ in range(count):
                _len, p = _read_varint(data, p)
                p += 1  # record attributes
                _ts, p = _read_varint(data, p)
                delta, p = _read_varint(data, p)
                klen, p = _read_varint(data, p)
                key = data[p:p + klen] if klen >= 0 else None
                p += max(klen, 0)
                vlen, p = _read_varint(data, p)
                value = data[p:p + vlen] if vlen >= 0 else None
                p += max(vlen, 0)
                nh, p = _read_varint(data, p)
                for _ in range(nh):
                    hk, p = _read_varint(data, p)
                    p += hk
                    hv, p = _read_varint(data, p)
                    p += max(hv, 0)
                recs.append((base + delta, key, value))
            b["records"] = recs
            if attributes & ATTR_CONTROL and recs and recs[0][1] is not None and len(recs[0][1]) >= 4:
                b["control_type"] = struct.unpack_from(">h", recs[0][1], 2)[0]
        out.append(b)
        pos = end
    return out


def list_offsets_v2_body(topic: str, partitions: list[int], timestamp: int, isolation_level: int) -> bytes:
    return (
        struct.pack(">ib", -1, isolation_level)  # replica id, isolation level
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", len(partitions))
        + b"".join(struct.pack(">iq", p, timestamp) for p in partitions)
    )


def parse_list_offsets_v2(body: bytes) -> dict:
    """{(topic, partition): (error_code, timestamp, offset)}."""
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            part, err, ts, off = r.i32(), r.i16(), r.i64(), r.i64()
            out[(topic, part)] = (err, ts, off)
    return out


def find_coordinator_v1_body(key: str, key_type: int) -> bytes:
    return kstring(key) + struct.pack(">b", key_type)


def parse_find_coordinator_v1(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    err = r.i16()
    msg = r.string()
    node = r.i32()
    host = r.string()
    port = r.i32()
    return {"error_code": err, "error_message": msg, "node_id": node, "host": host, "port": port}

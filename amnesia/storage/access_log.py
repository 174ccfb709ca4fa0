"""The S3 access log: who read or wrote which object, from SeaweedFS's audit stream, as JSON lines.

SeaweedFS sends one record per S3 request to a Fluent Forward receiver (`-s3.auditLogConfig`). This
module is that receiver (`python -m amnesia.storage.access_log --port P --out FILE`, started by the local stack
and run as a sidecar on a cluster) and the reader behind `amnesia stack logs audit`. A record carries
the identity, operation, bucket, key, status and time; keys name runs and stages, never record text.
"""

from __future__ import annotations

import argparse
import json
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

# Fields kept from SeaweedFS's AccessLog record, under our names.
_FIELDS = {
    "requester": "requester",
    "operation": "operation",
    "bucket": "bucket",
    "key": "key",
    "status": "status",
    "error_code": "error",
    "remote_ip": "remote_ip",
    "request_id": "request_id",
    "signature_version": "signature",
}
_MAX_PENDING = 1 << 20  # a peer that sends a megabyte without one complete record is not SeaweedFS


class AccessRecord(BaseModel):
    time: str
    requester: str = ""
    operation: str = ""
    bucket: str = ""
    key: str = ""
    status: int = 0
    error: str = ""
    remote_ip: str = ""
    request_id: str = ""
    signature: str = ""

    def line(self) -> str:
        who = self.requester or "(anonymous)"
        where = f"{self.bucket}/{self.key}" if self.key else (self.bucket or "-")
        err = f" {self.error}" if self.error else ""
        return f"{self.time}  {who:<10} {self.operation:<22} {self.status}{err}  {where}"


def to_record(event: object) -> AccessRecord | None:
    """One Fluent event ([tag, time, record, option] in JSON framing) as an AccessRecord."""
    if not isinstance(event, list) or len(event) < 3 or not isinstance(event[2], dict):
        return None
    raw = event[2]
    when = raw.get("time", event[1])
    stamp = datetime.fromtimestamp(float(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else ""
    values = {ours: raw[theirs] for theirs, ours in _FIELDS.items() if theirs in raw and raw[theirs] is not None}
    return AccessRecord(time=stamp, **values)


def decode_stream(buffer: str) -> tuple[list[object], str]:
    """Complete JSON values at the head of `buffer`, and what is left (an incomplete value)."""
    decoder = json.JSONDecoder()
    events, pos = [], 0
    while True:
        while pos < len(buffer) and buffer[pos].isspace():
            pos += 1
        if pos >= len(buffer):
            return events, ""
        try:
            value, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            return events, buffer[pos:]
        events.append(value)
        pos = end


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        pending = ""
        while chunk := self.request.recv(65536):
            events, pending = decode_stream(pending + chunk.decode("utf-8", errors="replace"))
            self.server.write(events)  # type: ignore[attr-defined]
            if len(pending) > _MAX_PENDING:
                return  # not a Fluent peer: drop the connection rather than grow without bound


class Receiver(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, out: Path) -> None:
        super().__init__((host, port), _Handler)
        self.out = out
        self._lock = threading.Lock()
        out.parent.mkdir(parents=True, exist_ok=True)

    def write(self, events: list[object]) -> None:
        records = [r for r in map(to_record, events) if r is not None]
        if not records:
            return
        with self._lock, open(self.out, "a") as fh:
            fh.writelines(r.model_dump_json() + "\n" for r in records)


def read(path: Path) -> Iterator[AccessRecord]:
    """The access log, oldest first (a torn last line from a crash is skipped)."""
    if not path.exists():
        return
    with open(path) as fh:
        for line in fh:
            try:
                yield AccessRecord.model_validate_json(line)
            except ValueError:
                continue


def wait_for(path: Path, predicate, timeout_s: float = 15.0) -> AccessRecord | None:  # type: ignore[no-untyped-def]
    """The first record matching `predicate`, waiting for SeaweedFS's asynchronous sender."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = next((r for r in read(path) if predicate(r)), None)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="amnesia.storage.access_log", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the records are appended to")
    args = parser.parse_args(argv)
    with Receiver(args.host, args.port, args.out) as server:
        print(f"s3 audit receiver on {args.host}:{args.port} -> {args.out}", file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One response's write as writev(2) of slices or send(2) of one buffer:
the time per write and its read on loopback TCP (run by hand, never in CI).

A proxy answering from its buffers can hand the kernel the head and the
body as slices (writev, as geolb and nginx do) or copy them into one
buffer first (send, as HAProxy does). This times both in one process,
rounds interleaved so that machine drift falls on both alike:

    taskset -c 0 python3 benches/send_writev.py          # 174-byte head + 1 KiB
    BODY=3 taskset -c 0 python3 benches/send_writev.py   # + 3 bytes

Python's own cost is the same in each loop but for the join of "send";
the differences that matter are the kernel's.
"""
import os
import socket
import statistics
import time

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
writer = socket.create_connection(listener.getsockname())
reader, _ = listener.accept()
for s in (writer, reader):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

head = b"H" * 174
body = b"x" * int(os.environ.get("BODY", "1024"))
size = len(head) + len(body)
N = int(os.environ.get("N", "50000"))


def run(kind):
    start = time.perf_counter()
    for _ in range(N):
        if kind == "writev, 4 slices (2 empty)":
            os.writev(writer.fileno(), [head, b"", body, b""])
        elif kind == "writev, 2 slices":
            os.writev(writer.fileno(), [head, body])
        else:
            writer.send(head + body)
        got = 0
        while got < size:
            got += len(reader.recv(65536))
    return (time.perf_counter() - start) / N * 1e6


results = {"writev, 4 slices (2 empty)": [], "writev, 2 slices": [], "send, joined": []}
for _ in range(int(os.environ.get("ROUNDS", "8"))):
    for kind, times in results.items():
        times.append(run(kind))
for kind, times in results.items():
    print(f"{kind}: median {statistics.median(times):.2f} µs a write and its read "
          f"({', '.join(f'{t:.2f}' for t in times)})")

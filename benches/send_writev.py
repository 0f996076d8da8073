#!/usr/bin/env python3
"""One response's write as writev(2) of slices or send(2) of one buffer:
the time per write and its read on loopback TCP (run by hand, never in CI).

A proxy answering from its buffers can hand the kernel the head and the
body as slices (writev, as geolb and nginx do) or copy them into one
buffer first (send, as HAProxy does). This times both in one process,
rounds interleaved so that machine drift falls on both alike:

    taskset -c 0 python3 benches/send_writev.py          # 174-byte head + 1 KiB
    BODY=3 taskset -c 0 python3 benches/send_writev.py   # + 3 bytes

Each way has a loop of its own, and every read of a round lands in one
buffer, so Python's cost differs between the ways only by the join of
"send" and the number of slices handed to writev. That cost is tens of
nanoseconds, about what the kernel could save: the script resolves
differences of about 0.1 µs in 9.5, not finer.
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


def loop(write):
    into = bytearray(65536)
    start = time.perf_counter()
    for _ in range(N):
        write()
        got = 0
        while got < size:
            got += reader.recv_into(into)
    return (time.perf_counter() - start) / N * 1e6


fd = writer.fileno()
WAYS = {
    "writev, 4 slices (2 empty)": lambda: os.writev(fd, [head, b"", body, b""]),
    "writev, 2 slices": lambda: os.writev(fd, [head, body]),
    "send, joined": lambda: writer.send(head + body),
}


results = {kind: [] for kind in WAYS}
for _ in range(int(os.environ.get("ROUNDS", "8"))):
    for kind, write in WAYS.items():
        results[kind].append(loop(write))
for kind, times in results.items():
    print(f"{kind}: median {statistics.median(times):.2f} µs a write and its read "
          f"({', '.join(f'{t:.2f}' for t in times)})")

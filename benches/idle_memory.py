#!/usr/bin/env python3
"""Clients and backends for benches/idle_memory.sh (run by hand, never in CI).

  idle_memory.py backend HTTP_PORT TCP_PORT
      An HTTP/1.1 backend answering every request "ok" on keep-alive
      connections, and a TCP backend that greets each connection with one
      byte and then holds it open, saying nothing more.
  idle_memory.py hold KIND PORT COUNT
      Opens COUNT connections to 127.0.0.1:PORT and holds them idle until
      killed. KIND http: one keep-alive request answered on each first;
      https: the TLS handshake (certificate not verified) and one request;
      tcp: until the backend's greeting arrives through the proxy (so the
      proxy's backend connection is open too). Prints "ready N" (N held)
      when done, "failed ..." on the first error.
"""

import asyncio
import ssl
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
# Connections opened at once: enough to be quick, few enough that no
# listen backlog overflows.
PARALLEL = 100


async def serve_http(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def serve_tcp(reader, writer):
    writer.write(b"h")
    await writer.drain()
    # Held until the other side closes.
    await reader.read()
    writer.close()


async def backend(http_port, tcp_port):
    h = await asyncio.start_server(serve_http, "127.0.0.1", http_port, backlog=4096)
    t = await asyncio.start_server(serve_tcp, "127.0.0.1", tcp_port, backlog=4096)
    async with h, t:
        await asyncio.gather(h.serve_forever(), t.serve_forever())


async def one(kind, port, tls):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
    )
    if kind == "tcp":
        if await reader.readexactly(1) != b"h":
            raise RuntimeError("no greeting")
    else:
        writer.write(REQUEST)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answered {head[:40]!r}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    return reader, writer


async def hold(kind, port, count):
    tls = None
    if kind == "https":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    held = []
    gate = asyncio.Semaphore(PARALLEL)

    async def gated():
        async with gate:
            return await asyncio.wait_for(one(kind, port, tls), 30)

    try:
        held = await asyncio.gather(*(gated() for _ in range(count)))
    except Exception as e:  # noqa: BLE001 - reported, then the script gives up
        print(f"failed {kind}: {type(e).__name__}: {e}", flush=True)
        return
    print(f"ready {len(held)}", flush=True)
    await asyncio.Event().wait()


def main():
    if sys.argv[1] == "backend":
        asyncio.run(backend(int(sys.argv[2]), int(sys.argv[3])))
    else:
        asyncio.run(hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))


if __name__ == "__main__":
    main()

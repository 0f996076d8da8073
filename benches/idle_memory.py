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
      proxy's backend connection is open too); h2: as https with ALPN h2,
      HTTP/2's preface and SETTINGS (the server's acknowledged), and one
      GET on stream 1 read to its end. Prints "ready N" (N held)
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


# RFC 9113's preface and an empty SETTINGS; then a GET / on stream 1
# (END_STREAM, END_HEADERS) in HPACK: :method GET, :scheme https, :path /
# (static table 2, 7, 4) and :authority localhost (a literal).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
H2_BLOCK = b"\x82\x87\x84\x41\x09localhost"
H2_GET = len(H2_BLOCK).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + H2_BLOCK


async def h2_exchange(reader, writer):
    writer.write(H2_PREFACE + H2_GET)
    await writer.drain()
    status = None
    while True:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:
            writer.write(H2_SETTINGS_ACK)
            await writer.drain()
        elif kind == 0x7:
            raise RuntimeError(f"GOAWAY {payload[4:8].hex()}")
        elif stream == 1 and kind == 0x1:
            # :status 200 is the static table's 8: every server sends it so.
            status = payload[:1]
            if status != b"\x88":
                raise RuntimeError(f"answered {payload[:8].hex()}")
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            if status is None:
                raise RuntimeError("stream 1 ended without an answer")
            return


async def one(kind, port, tls):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
    )
    if kind == "h2":
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if alpn != "h2":
            raise RuntimeError(f"ALPN agreed on {alpn!r}, not h2")
        await h2_exchange(reader, writer)
    elif kind == "tcp":
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
    if kind in ("https", "h2"):
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["h2" if kind == "h2" else "http/1.1"])
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

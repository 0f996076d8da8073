#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into seeds/<target>/
(README "Tests" -> fuzzing): valid DNS queries with and without EDNS and
ECS, the repository's config files, PROXY v1/v2 headers and request heads.
The fuzzer starts from these; the minimized corpus it leaves is what
tests/fuzz/corpus/ keeps."""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def qname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def ecs(family, prefix, addr):
    need = (prefix + 7) // 8
    data = struct.pack(">HBB", family, prefix, 0) + addr[:need]
    return struct.pack(">HH", 8, len(data)) + data


def query(name, qtype, edns=None, options=b"", qid=0x1234, flags=0x0100):
    m = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    m += qname(name) + struct.pack(">HH", qtype, 1)
    if edns:
        m += b"\0" + struct.pack(">HHIH", 41, edns, 0x8000, len(options)) + options
    return m


A, NS, CNAME, SOA, MX, TXT, AAAA, ANY = 1, 2, 5, 6, 15, 16, 28, 255
LONDON = bytes([81, 2, 69, 160])
V6 = bytes.fromhex("20010db8000000000000000000000001")
COOKIE = struct.pack(">HH", 10, 8) + b"clientck"


def dns():
    qs = {
        "a_geo": query("api.mysite.com", A),
        "a_geo_edns": query("api.mysite.com", A, 1232),
        "a_geo_ecs4": query("api.mysite.com", A, 1232, ecs(1, 24, LONDON)),
        "aaaa_geo_ecs6": query("api.mysite.com", AAAA, 4096, ecs(2, 56, V6)),
        "a_geo_ecs0": query("two.mysite.com", A, 1232, ecs(1, 0, b"")),
        "apex_geo": query("APEX.test", AAAA, 512),
        "cname": query("www.mysite.com", A, 1232, COOKIE),
        "cname_loop": query("loop1.mysite.com", A),
        "cname_away": query("away.mysite.com", ANY),
        "wild": query("x.wild.mysite.com", A, 1232),
        "ent": query("deep.mysite.com", A),
        "nx": query("nothing.mysite.com", MX, 1232),
        "soa": query("mysite.com", SOA, 1232),
        "ns": query("mysite.com", NS),
        "txt_big": query("big.mysite.com", TXT, 600),
        "refused": query("example.org", A),
        "ecs_bad": query("api.mysite.com", A, 1232, struct.pack(">HHHBB", 8, 4, 1, 33, 0)),
    }
    for name, q in qs.items():
        write("dns_fast", name, q)
        write("dns_full", name, q)


def config():
    root = os.path.dirname(HERE)
    for f in ["minimal.toml", "geolb.toml", "docker.toml", "reference.toml"]:
        with open(os.path.join(root, "config", f), "rb") as src:
            write("config", f, src.read())


def proxy():
    sig = b"\r\n\r\n\0\r\nQUIT\n"
    v2_4 = sig + bytes([0x21, 0x11]) + struct.pack(">H", 12) + LONDON + bytes([192, 0, 2, 1]) + struct.pack(">HH", 51234, 443)
    tlv = bytes([0x02]) + struct.pack(">H", 9) + b"a.example"
    v2_6 = sig + bytes([0x21, 0x21]) + struct.pack(">H", 36 + len(tlv)) + V6 + V6[::-1] + struct.pack(">HH", 1, 65535) + tlv
    seeds = {
        "v1_tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\nGET / HTTP/1.1\r\n",
        "v1_tcp6": b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n\x16\x03\x01",
        "v1_unknown": b"PROXY UNKNOWN\r\n",
        "v1_unknown_addrs": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        "v2_tcp4": v2_4 + b"payload",
        "v2_tcp6_tlv": v2_6,
        "v2_local": sig + bytes([0x20, 0x00, 0x00, 0x00]),
        "v2_unix": sig + bytes([0x21, 0x31]) + struct.pack(">H", 216) + b"\0" * 216,
    }
    for name, data in seeds.items():
        write("proxy_protocol", name, data)


def http():
    seeds = {
        "get": b"GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: x\r\n\r\n",
        "absolute": b"GET http://Api.Example.com:8080/a/b HTTP/1.1\r\nHost: other\r\n\r\n",
        "http10": b"GET / HTTP/1.0\r\n\r\n",
        "hop": b"POST /up HTTP/1.1\r\nHost: [::1]:80\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nKeep-Alive: 5\r\n\r\n",
        "upgrade": b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "h2c": b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        "forwarded": b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nCookie: a=1\r\nCookie: session=abc; b=2\r\nX-User: u1\r\n\r\n",
        "dots": b"GET /public/%2e%2e/admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "connect": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        "options": b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "two_hosts": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    }
    for name, data in seeds.items():
        write("http_head", name, data)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        OUT = sys.argv[1]
    dns()
    config()
    proxy()
    http()

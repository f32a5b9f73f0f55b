#!/usr/bin/env python3
"""mock_sse_server.py — a stand-in for other OpenAI-compatible servers, to test
that `xds bench-serve` reads what they send, not only what xds serve sends.

Usage: mock_sse_server.py MODE PORTFILE
  MODE close:   HTTP/1.0-style body delimited by connection close, one text
                chunk per token, no usage chunk (older llama-server style);
                a first chunk with empty text (as vLLM's role chunk) and SSE
                comments are mixed in.
  MODE chunked: HTTP/1.1 chunked transfer encoding whose chunk boundaries cut
                SSE lines at random places, CRLF line ends, and a final usage
                chunk with "choices": [].
Each completion streams exactly max_tokens text pieces. The bound port is
written to PORTFILE; the server runs until killed.
"""
import json
import random
import socketserver
import sys
from http.server import BaseHTTPRequestHandler

MODE = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1" if MODE == "chunked" else "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "mock-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n))
        assert req["stream"] is True and req["model"] == "mock-model"
        k = int(req["max_tokens"])
        events = []
        head = {"id": "x", "object": "text_completion", "model": "mock-model"}
        if MODE == "close":
            events.append(": a comment\n\n")
            events.append("data: " + json.dumps(dict(head, choices=[{"index": 0, "text": "", "finish_reason": None}])) + "\n\n")
        for i in range(k):
            fin = "length" if i == k - 1 else None
            ev = "data: " + json.dumps(dict(head, choices=[{"index": 0, "text": f" w{i}", "finish_reason": fin}])) + "\n\n"
            events.append(ev if MODE == "close" else ev.replace("\n", "\r\n"))
        if MODE == "chunked":
            usage = {"prompt_tokens": len(req["prompt"].split()), "completion_tokens": k, "total_tokens": 0}
            events.append("data: " + json.dumps(dict(head, choices=[], usage=usage)) + "\r\n\r\n")
        events.append("data: [DONE]\n\n")
        data = "".join(events).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if MODE == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            rng = random.Random(len(data))
            i = 0
            while i < len(data):
                j = min(len(data), i + rng.randint(1, 97))
                piece = data[i:j]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                self.wfile.flush()
                i = j
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Connection", "close")
            self.end_headers()
            for ev in events:
                self.wfile.write(ev.encode())
                self.wfile.flush()
            self.close_connection = True


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = Server(("127.0.0.1", 0), Handler)
with open(sys.argv[2], "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()

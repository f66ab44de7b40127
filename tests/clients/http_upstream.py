"""The application behind the sidecar's HTTP proxy in tests: Python's own threading HTTP server.

Usage: python3 http_upstream.py PORT

  GET  /orders/{id}, /anything   200, a JSON echo of the request: path, headers (traceparent,
                                 tracestate, host, x-forwarded-for ...) and protocol
  GET  /status/{code}            that status
  GET  /slow/{ms}                200 after that many milliseconds
  GET  /stream/{n}               n chunks of "chunk i", 200 ms apart (chunked transfer encoding)
  POST /echo                     the request body back (Content-Length or chunked)
  GET  /upgrade  (Upgrade: echo) 101, then every byte sent back on the raw connection
  GET  /unframed/{n}             n lines with neither Content-Length nor chunked: the body ends at close
  GET  /early-hints              103 Early Hints, then the echo
  GET  /garbage                  bytes that are not an HTTP response, then close
  GET  /closes-later             the echo, then the connection closed 200 ms later (an idle timeout)
  HEAD any                       the echo's headers (its Content-Length), no body
The echo's "peer_port" is the port of the connection the request came on (connection reuse is seen).
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "status" and len(parts) == 2:
            self.reply(int(parts[1]), b"status\n", "text/plain")
        elif parts[0] == "slow" and len(parts) == 2:
            time.sleep(int(parts[1]) / 1000)
            self.reply(200, b"slow\n", "text/plain")
        elif parts[0] == "stream" and len(parts) == 2:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(parts[1])):
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "unframed" and len(parts) == 2:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for i in range(int(parts[1])):
                self.wfile.write(f"unframed {i}\n".encode())
            self.close_connection = True
        elif parts[0] == "early-hints":
            self.send_response_only(103)
            self.send_header("Link", "</style.css>; rel=preload")
            self.end_headers()
            self.reply(200, json.dumps(self.echo()).encode())
        elif parts[0] == "garbage":
            self.wfile.write(b"\x00\x01 not http at all\r\n\r\n")
            self.close_connection = True
        elif parts[0] == "closes-later":
            self.reply(200, json.dumps(self.echo()).encode())
            self.wfile.flush()
            time.sleep(0.2)
            self.close_connection = True
        elif parts[0] == "upgrade" and self.headers.get("Upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self.reply(200, json.dumps(self.echo()).encode())

    def echo(self):
        return {
            "path": self.path,
            "protocol": self.request_version,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "peer_port": self.client_address[1],
        }

    def do_HEAD(self):
        body = json.dumps(self.echo()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(200, body, "application/octet-stream")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()

"""A real HTTP server that misbehaves on purpose, for the failures a healthy `transformers serve`
cannot be asked for: `python broken_server.py PORT`. The requested model name picks the behaviour:

    malformed   200 with an SSE stream whose second event is not JSON
    hang        accepts the request and answers nothing for 60 s (the client's timeout fires)
    forbidden   401 with an OpenAI-style error body
    overloaded  503 with an OpenAI-style error body
    anything    404 "model does not exist" (what vLLM answers for an unknown model name)
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json(200, {"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        model = body.get("model", "")
        if model == "malformed":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: {this is not json\n\n")
            self.wfile.flush()
            self.close_connection = True
        elif model == "hang":
            time.sleep(60)
        elif model == "forbidden":
            self._json(401, {"error": {"message": "invalid API key", "type": "auth_error"}})
        elif model == "overloaded":
            self._json(503, {"error": {"message": "the engine is overloaded", "type": "server_error"}})
        else:
            self._json(404, {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()

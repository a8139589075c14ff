"""Run the server inside the current process, on a background thread (notebooks, tests, benchmarks).

    with BackgroundServer(create_app(engine, "my-model")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")

It binds 127.0.0.1 on a free port by default and returns once uvicorn is accepting connections.
"""
from __future__ import annotations

import threading
import time

import uvicorn


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        from r1kit.server.api import uvicorn_config

        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level,
                                                    timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, name="r1kit-http", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (is the port free?)")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

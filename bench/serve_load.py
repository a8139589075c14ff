"""Serving load test: N concurrent streaming clients over HTTP against `r1kit serve`, and against
`transformers serve` on the same checkpoint in the same run, with the ratio.

    python bench/serve_load.py --clients 16 --requests 4 --max-tokens 64            # random "small" checkpoint
    python bench/serve_load.py --model ./ckpt --peer none

Each client sends its requests one after another (streaming chat completions, include_usage) and measures:
TTFT (request sent -> first text chunk), TPOT / inter-token latency ((last chunk - first chunk) / (tokens - 1),
per request, so servers that pack several tokens in one chunk are measured fairly), end-to-end latency. Reported:
requests/s and output tokens/s over the whole run, p50/p99 of TTFT and inter-token latency.
`transformers serve` needs the `accelerate` package; the peer is skipped (with a note) where it does not start.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PROMPTS = ["What is 12 + 30?", "Alice has 7 apples and gives away 3. How many are left?",
           "Using the numbers [3, 5, 9], create an equation that equals 17.", "Compute 144 / 12 and 9 ** 2.",
           "Explain why the sky is blue in one sentence.", "Is 91 a prime number?"]


def start(cmd: list[str], ready: re.Pattern, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """Start a server process; wait for its startup line; return (process, base url)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, lines = time.time() + timeout, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited:\n" + "".join(lines[-20:]))
            continue
        lines.append(line)
        m = ready.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain its output
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start in {timeout}s:\n" + "".join(lines[-20:]))


def one_request(url: str, model: str, prompt: str, max_tokens: int, extra: dict) -> dict:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}, **extra}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first = last = None
    chunks, tokens = 0, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        for ch in event.get("choices") or []:
            d = ch.get("delta") or {}
            if d.get("content") or d.get("reasoning_content") or d.get("reasoning"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
    end = time.perf_counter()
    conn.close()
    tokens = tokens if tokens is not None else chunks
    return {"ttft": (first or end) - t0, "e2e": end - t0, "tokens": tokens,
            "itl": (last - first) / (tokens - 1) if first is not None and tokens > 1 else None}


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int, extra: dict) -> dict:
    one_request(url, model, "warm up", 4, extra)
    results, errors = [], []
    lock = threading.Lock()

    def client(c: int):
        for r in range(requests):
            try:
                res = one_request(url, model, PROMPTS[(c + r) % len(PROMPTS)], max_tokens, extra)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    itl = sorted(r["itl"] for r in results if r["itl"] is not None)
    return {"requests": len(results), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "req_per_s": len(results) / wall, "tok_per_s": sum(r["tokens"] for r in results) / wall,
            # a server that failed every request reports nan latencies and no ratio
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99), "itl_p50": _pct(itl, 50), "itl_p99": _pct(itl, 99),
            "mean_tokens": statistics.mean(r["tokens"] for r in results) if results else 0}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def _row(name: str, r: dict) -> str:
    return (f"| {name} | {r['requests']} ({r['errors']} err) | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
            f"{r['ttft_p50'] * 1000:.0f} / {r['ttft_p99'] * 1000:.0f} | {r['itl_p50'] * 1000:.1f} / "
            f"{r['itl_p99'] * 1000:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random deepseek_v3 checkpoint)")
    ap.add_argument("--preset", default="small", help="preset of the random checkpoint (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--peer", default="transformers", choices=["transformers", "transformers-cb", "none"],
                    help="transformers-cb: `transformers serve --continuous-batching`")
    args = ap.parse_args()

    tmp = None
    model = args.model
    if model is None:
        from r1kit.models.random_checkpoint import create_random_checkpoint

        tmp = tempfile.mkdtemp(prefix="r1kit-serve-bench-")
        model = os.path.join(tmp, f"deepseek_v3-{args.preset}")
        create_random_checkpoint(model, model_type="deepseek_v3", preset=args.preset, seed=0)
    print(f"model {model}; {args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens}, "
          f"temperature 1.0, streaming", flush=True)
    results = {}
    try:
        proc, url = start([sys.executable, "-m", "r1kit", "serve", "--model", model, "--port", "0",
                           "--max-model-len", "1024", "--max-num-seqs", str(max(args.clients, 1))],
                          re.compile(r"at (http://[^/\s]+)/v1"))
        try:
            results["r1kit serve"] = run_load(url, model, args.clients, args.requests, args.max_tokens,
                                              {"ignore_eos": True})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if args.peer != "none":
            name = "transformers serve" + (" --continuous-batching" if args.peer == "transformers-cb" else "")
            exe = shutil.which("transformers")
            port = _free_port()
            cmd = [exe, "serve", model, "--port", str(port)] + (["--continuous-batching"] if "cb" in args.peer else [])
            try:
                proc, url = start(cmd, re.compile(r"Uvicorn running on (http://[^\s]+)"))
            except Exception as e:  # noqa: BLE001 - the peer is optional
                print(f"note: {name} did not start here: {str(e).splitlines()[-1][:300]}")
            else:
                try:
                    results[name] = run_load(url.replace("localhost", "127.0.0.1"), model, args.clients,
                                             args.requests, args.max_tokens, {})
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n| server | requests | req/s | output tok/s | TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(_row(name, r))
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    if len(results) == 2 and all(r["requests"] for r in results.values()):
        (_, a), (peer, b) = results.items()
        print(f"\nr1kit / {peer}: {a['tok_per_s'] / b['tok_per_s']:.2f}x output tokens/s, "
              f"{a['req_per_s'] / b['req_per_s']:.2f}x requests/s, TTFT p50 {b['ttft_p50'] / a['ttft_p50']:.2f}x lower")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()

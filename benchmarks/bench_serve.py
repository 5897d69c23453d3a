"""Load on ``llamafactory-cli api`` serving Kimi-Audio: concurrent clients, good and bad requests mixed.

Starts the real server (``tests/serve_helpers.ApiServer``) on a tiny checkpoint on CPU (or ``--model DIR``), then
``--clients`` threads each send ``--requests`` requests, cycling through: chat with a WAV data URL, chat with an MP3
``input_audio`` part, a streamed chat, a transcription, and every ``--bad-every``-th request a bad clip (non-audio,
empty, truncated WAV, too long, bad base64). It checks that every good request got 200 with an answer, every bad one
a one-line 400, and that the server process is alive at the end; it prints p50 / p95 latency per kind and the
throughput, and exits 1 when any check failed.

    python benchmarks/bench_serve.py                          # 16 clients x 8 requests, tiny checkpoint, CPU
    python benchmarks/bench_serve.py --clients 4 --requests 4 # a short run on a shared machine
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from serve_helpers import ApiServer, clip_bytes, data_url  # noqa: E402

MAX_SECONDS = 30


def chat_body(parts: list, stream: bool = False) -> dict:
    return {"model": "kimi", "messages": [{"role": "user", "content": parts}], "max_tokens": 4, "stream": stream}


def audio_url(data: bytes, mime: str = "audio/wav") -> dict:
    return {"type": "audio_url", "audio_url": {"url": data_url(data, mime)}}


def build_requests() -> tuple[dict[str, tuple], dict[str, tuple]]:
    """kind -> (path, json body or multipart files): the good kinds and the bad kinds."""
    wav, mp3 = clip_bytes(1.0), clip_bytes(1.0, "MP3", "MPEG_LAYER_III")
    mp3_part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(mp3).decode(), "format": "mp3"}}
    good = {
        "chat_wav": ("/v1/chat/completions", chat_body([{"type": "text", "text": "Hi"}, audio_url(wav)])),
        "chat_mp3": ("/v1/chat/completions", chat_body([mp3_part])),
        "chat_stream": ("/v1/chat/completions", chat_body([audio_url(wav)], stream=True)),
        "transcribe": ("/v1/audio/transcriptions", {"file": ("a.wav", wav, "audio/wav")}),
    }
    whole = clip_bytes(2.0)
    bad = {
        "bad_not_audio": ("/v1/chat/completions", chat_body([audio_url(b"not audio " * 100)])),
        "bad_empty": ("/v1/chat/completions", chat_body([audio_url(b"")])),
        "bad_truncated": ("/v1/chat/completions", chat_body([audio_url(whole[: len(whole) // 2])])),
        "bad_too_long": ("/v1/audio/transcriptions", {"file": ("l.flac", clip_bytes(MAX_SECONDS + 5.0, "FLAC"))}),
        "bad_base64": ("/v1/chat/completions", chat_body([{"type": "audio_url", "audio_url": {"url": "data:,@@"}}])),
    }
    return good, bad


def send(client, url: str, kind: str, request: tuple) -> tuple[str, float, str | None]:
    """(kind, seconds, problem or None)."""
    path, payload = request
    start = time.perf_counter()
    try:
        if path.endswith("transcriptions"):
            response = client.post(url + path, files=payload, data={"model": "kimi"})
        else:
            response = client.post(url + path, json=payload)
    except Exception as err:  # a dead server or a dropped connection
        return kind, time.perf_counter() - start, f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    return kind, seconds, check(kind, payload, response)


def check(kind: str, payload: object, response) -> str | None:
    if kind.startswith("bad_"):
        if response.status_code != 400:
            return f"status {response.status_code}: {response.text[:200]}"
        detail = response.json().get("detail", "")
        return None if isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail else detail
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    if kind == "chat_stream":
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        ok = events and events[-1] == "[DONE]" and not any('"error"' in event for event in events)
        return None if ok else f"broken stream: {response.text[-200:]}"
    body = response.json()
    text = body.get("text") if kind == "transcribe" else body["choices"][0]["message"]["content"]
    return None if isinstance(text, str) else f"no text in {json.dumps(body)[:200]}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> int:
    import httpx

    good, bad = build_requests()
    plan, counts = [], {"good": 0, "bad": 0}
    for client_index in range(args.clients):
        for number in range(args.requests):
            step = client_index * args.requests + number
            which = "bad" if args.bad_every and step % args.bad_every == args.bad_every - 1 else "good"
            kinds = bad if which == "bad" else good
            kind = list(kinds)[counts[which] % len(kinds)]  # each list cycled on its own
            counts[which] += 1
            plan.append((client_index, kind, kinds[kind]))
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as workdir:
        model = args.model or make_tiny(workdir)
        server = ApiServer(model, Path(workdir), env={"KIMI_AUDIO_SERVE_MAX_SECONDS": str(MAX_SECONDS)})
        started = time.perf_counter()
        server.start()
        print(f"server ready in {time.perf_counter() - started:.1f} s at {server.url}", flush=True)
        try:
            results = drive(server.url, plan, args.clients, httpx)
            alive = server.alive()
        finally:
            server.stop()
    return report(results, alive)


def drive(url: str, plan: list, clients: int, httpx) -> tuple[list, float]:
    def one_client(index: int) -> list:
        with httpx.Client(timeout=900) as client:
            return [send(client, url, kind, request) for owner, kind, request in plan if owner == index]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [item for batch in pool.map(one_client, range(clients)) for item in batch]
    return results, time.perf_counter() - start


def report(outcome: tuple[list, float], alive: bool) -> int:
    results, wall = outcome
    print(f"{'kind':<16}{'n':>4}{'failed':>8}{'p50 s':>9}{'p95 s':>9}")
    for kind in sorted({kind for kind, _, _ in results}):
        times = [seconds for k, seconds, _ in results if k == kind]
        failed = sum(1 for k, _, problem in results if k == kind and problem)
        print(f"{kind:<16}{len(times):>4}{failed:>8}{percentile(times, 0.5):>9.2f}{percentile(times, 0.95):>9.2f}")
    everything = [seconds for _, seconds, _ in results]
    print(
        f"all: {len(results)} requests in {wall:.1f} s = {len(results) / wall:.2f} req/s; "
        f"p50 {statistics.median(everything):.2f} s, p95 {percentile(everything, 0.95):.2f} s"
    )
    problems = [f"{kind}: {problem}" for kind, _, problem in results if problem]
    for line in problems[:10]:
        print(f"FAILED {line}")
    print(f"server alive at the end: {alive}")
    return 0 if alive and not problems else 1


def make_tiny(workdir: str) -> str:
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(os.path.join(workdir, "tiny")).path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--bad-every", type=int, default=4, help="every N-th request is a bad one (0: none)")
    parser.add_argument("--model", help="a Kimi-Audio checkpoint (default: a tiny random one, CPU)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

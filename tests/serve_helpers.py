"""The real ``llamafactory-cli api`` in a subprocess on 127.0.0.1 (tests/integration/test_serve.py,
benchmarks/bench_serve.py), and encoded audio clips to send it."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = str(Path(sys.executable).with_name("llamafactory-cli"))
READY_TIMEOUT = 600.0  # generous: a loaded 2-core machine starts the server several times slower than an idle one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clip_bytes(seconds: float = 1.0, fmt: str = "WAV", subtype: str | None = None, rate: int = 16000) -> bytes:
    """A tone of ``seconds`` encoded as ``fmt`` (WAV, FLAC, MP3, OGG) in memory."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, wave, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def data_url(data: bytes, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class ApiServer:
    """``llamafactory-cli api CONFIG`` on a free port; ``url`` once :meth:`start` returned."""

    def __init__(self, checkpoint: str, workdir: Path, env: dict[str, str] | None = None, **config: object) -> None:
        self.workdir, self.port = Path(workdir), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"api_{self.port}.log"
        self.safe_media = self.workdir / "safe_media"  # LLaMA-Factory's SAFE_MEDIA_PATH: local files must be here
        self.safe_media.mkdir(parents=True, exist_ok=True)
        settings = {"model_name_or_path": checkpoint, "template": "kimi_audio", "trust_remote_code": True}
        settings.update({"max_new_tokens": 4, **config})
        self.config_path = self.workdir / f"api_{self.port}.yaml"
        self.config_path.write_text(json.dumps(settings, indent=2))  # JSON is YAML
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "API_"))}
        self.env.update(
            API_HOST="127.0.0.1",
            API_PORT=str(self.port),
            API_VERBOSE="0",  # LLaMA-Factory logs every request body otherwise, base64 audio included
            SAFE_MEDIA_PATH=str(self.safe_media),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",
            **(env or {}),
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = READY_TIMEOUT) -> ApiServer:
        import httpx

        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [CLI, "api", str(self.config_path)], cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llamafactory-cli api exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"llamafactory-cli api not ready after {timeout:.0f} s:\n{self.log()[-4000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

"""A fresh interpreter without LLaMA-Factory that loads a checkpoint through ``use_native_auto_classes()``, runs it,
saves it and loads it again (the README's "Use from Python"; test_auto_classes and the export tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """\
    import json, sys
    import torch
    import llamafactory_kimi_audio
    llamafactory_kimi_audio.use_native_auto_classes()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    path, out_dir, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    kwargs = {"trust_remote_code": True} if trust else {}
    config = AutoConfig.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    probe = {"input_ids": torch.tensor([[3, 10, 20, 30, 40]])}
    with torch.no_grad():
        logits = model(**probe).logits
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    again = AutoModelForCausalLM.from_pretrained(out_dir, **kwargs).eval()
    with torch.no_grad():
        same = torch.equal(again(**probe).logits, logits)
    print(json.dumps({
        "classes": [type(x).__name__ for x in (config, model, tokenizer, processor, again)],
        "model_type": [config.model_type, model.config.model_type],
        "saved_model_type": json.load(open(out_dir + "/config.json"))["model_type"],
        "same_logits": same,
        "remote_code": sorted(m for m in sys.modules if "moonshot_kimia" in m or "tokenization_kimia" in m),
        "llamafactory": "llamafactory" in sys.modules,
    }))
    """
)


def run_child(path: str, out_dir: Path, trust: bool) -> tuple[dict, str]:
    """``CHILD`` on ``path`` → (its JSON line, its stderr); fails the test if the child failed."""
    return child_output(start_child(path, out_dir, trust))


def start_child(path: str, out_dir: Path, trust: bool) -> subprocess.CompletedProcess:
    """``CHILD`` on ``path``, as it ended (for runs side by side; ``child_output`` reads it in the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", CHILD, path, str(out_dir), "1" if trust else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def child_output(done: subprocess.CompletedProcess) -> tuple[dict, str]:
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

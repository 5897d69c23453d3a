"""Plain transformers: ``use_native_auto_classes()`` routes the Auto classes to the native Kimi-Audio classes, for
the package's own layout and for the official fine-tune export (``model_type: "qwen2"``), in a fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lf_runs import two_at_a_time
from native_reload import child_output, start_child

from llamafactory_kimi_audio.models.auto import is_kimi_audio_checkpoint, mismatched_model_type


@pytest.fixture(scope="module")
def official_export(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny checkpoint with the config.json the official fine-tune export writes (model_type "qwen2")."""
    target = tmp_path_factory.mktemp("official_export") / "ckpt"
    shutil.copytree(tiny_checkpoint.path, target)
    config = json.loads((target / "config.json").read_text())
    assert config["architectures"] == ["MoonshotKimiaForCausalLM"] and config["auto_map"]
    config["model_type"] = "qwen2"
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


def test_detection_by_architectures_and_auto_map(official_export, tiny_checkpoint, tmp_path):
    assert is_kimi_audio_checkpoint(official_export) and mismatched_model_type(official_export) == "qwen2"
    assert is_kimi_audio_checkpoint(tiny_checkpoint.path) and mismatched_model_type(tiny_checkpoint.path) is None
    plain = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(plain))
    assert not is_kimi_audio_checkpoint(tmp_path) and mismatched_model_type(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({**plain, "architectures": [], "auto_map": {
        "AutoModelForCausalLM": "modeling_moonshot_kimia.MoonshotKimiaForCausalLM"}}))  # fmt: skip
    assert is_kimi_audio_checkpoint(tmp_path) and mismatched_model_type(tmp_path) == "qwen2"


@pytest.fixture(scope="module")
def children(official_export, tiny_checkpoint, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The fresh interpreters of this module's fast tests, two at a time (each spends most of its time importing
    transformers on one core): the official export through the Auto classes without and with trust_remote_code, its
    direct load, and the package's own layout."""
    out = tmp_path_factory.mktemp("children")
    jobs = {
        "official_False": lambda: start_child(official_export, out / "official_False", False),
        "official_True": lambda: start_child(official_export, out / "official_True", True),
        "direct": lambda: direct_load(official_export, out / "direct"),
        "package": lambda: start_child(tiny_checkpoint.path, out / "package", True),
    }
    return dict(zip(jobs, two_at_a_time(lambda job: job(), jobs.values())))


@pytest.mark.parametrize("trust", [False, True])
def test_official_export_loads_natively_with_one_warning(official_export, children, trust):
    out, stderr = child_output(children[f"official_{trust}"])
    native = ["KimiAudioConfig", "KimiAudioForCausalLM", "KimiAudioTokenizer", "KimiAudioProcessor"]
    assert out["classes"] == [*native, "KimiAudioForCausalLM"]
    assert out["model_type"] == ["moonshot_kimia", "moonshot_kimia"] and out["saved_model_type"] == "moonshot_kimia"
    assert out["same_logits"] and out["remote_code"] == [] and not out["llamafactory"]
    warnings = [line for line in stderr.splitlines() if "model_type" in line or "model of type" in line]
    assert len(warnings) == 1, stderr[-3000:]
    assert "model_type 'qwen2'" in warnings[0] and "MoonshotKimiaForCausalLM" in warnings[0]
    assert official_export in warnings[0]


DIRECT = textwrap.dedent(
    """\
    import json, sys
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.versions import DTYPE_KWARG
    model = KimiAudioForCausalLM.from_pretrained(sys.argv[1], **{DTYPE_KWARG: "float32"})
    repr(model.config), model.config.to_dict(), model.config.to_json_string()
    model.save_pretrained(sys.argv[2])
    saved = json.load(open(sys.argv[2] + "/config.json"))
    print(json.dumps([model.config.model_type, saved["model_type"], saved.get("torch_dtype"), "dtype" in saved]))
    """
)


def direct_load(path: str, out_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", DIRECT, path, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_direct_load_of_an_official_export_is_kimi_audio_without_dtype_notices(children):
    """``KimiAudioForCausalLM.from_pretrained`` itself (no Auto class, no patch) ends with model_type
    moonshot_kimia; repr / to_dict / save never read the deprecated ``torch_dtype``; config.json keeps that key."""
    done = children["direct"]
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["moonshot_kimia", "moonshot_kimia", "float32", False]
    assert "torch_dtype` is deprecated" not in done.stderr


def test_package_layout_loads_without_warning(children):
    out, stderr = child_output(children["package"])
    assert out["classes"][:2] == ["KimiAudioConfig", "KimiAudioForCausalLM"] and out["same_logits"]
    assert "model_type" not in stderr


def test_token_ids_agree_with_the_tokenizer_so_training_logs_no_alignment(tiny_checkpoint, tmp_path):
    """The tiny checkpoint's config.json / generation_config.json carry the ids the tokenizer has in a kimi_audio run,
    and the loader aligns a checkpoint that says otherwise (the official config's ids are unverified): the Trainer's
    align_special_tokens then changes nothing and logs no "tokenizer has new PAD/BOS/EOS tokens" warning."""
    import logging

    from transformers.trainer_utils import align_special_tokens

    from llamafactory_kimi_audio.models import special_tokens as st
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer

    tokenizer = KimiAudioTokenizer.from_pretrained(tiny_checkpoint.path)
    tokenizer.eos_token = st.TEXT_EOS  # what LLaMA-Factory's kimi_audio template does (replace_eos)
    expected = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    shipped = json.loads((Path(tiny_checkpoint.path) / "config.json").read_text())
    assert (shipped["bos_token_id"], shipped["eos_token_id"], shipped["pad_token_id"]) == expected

    target = tmp_path / "other_ids"
    shutil.copytree(tiny_checkpoint.path, target)
    msg_end = tokenizer.convert_tokens_to_ids(st.MSG_END)
    config = {**shipped, "bos_token_id": None, "eos_token_id": tokenizer.convert_tokens_to_ids(st.EOS)}
    config.pop("pad_token_id")
    (target / "config.json").write_text(json.dumps(config))
    generation = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": msg_end}))
    for path in (tiny_checkpoint.path, str(target)):
        model = KimiAudioForCausalLM.from_pretrained(path)
        assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == expected
        before = (model.config.to_dict(), _generation_ids(model))
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # transformers' loggers do not propagate to pytest's caplog
        logging.getLogger("transformers.trainer_utils").addHandler(handler)
        try:
            align_special_tokens(model, tokenizer)
        finally:
            logging.getLogger("transformers.trainer_utils").removeHandler(handler)
        assert not [r for r in records if "new PAD/BOS/EOS" in r.getMessage()], path
        assert (model.config.to_dict(), _generation_ids(model)) == before, path
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, msg_end]  # the shipped stop id stays


def _generation_ids(model) -> tuple:
    """bos, pad and the set of EOS ids (align_special_tokens turns an int EOS into a one-item list, harmlessly)."""
    config = model.generation_config
    eos = config.eos_token_id
    return config.bos_token_id, config.pad_token_id, frozenset([eos] if isinstance(eos, int) else eos)


@pytest.mark.slow
def test_readme_use_from_python_runs_as_written_on_cpu(tiny_checkpoint, tmp_path):
    """README "Use from Python", the block verbatim, in a fresh interpreter without a GPU: the tiny checkpoint stands
    in at the path the block names, and a synthetic clip at clip.wav."""
    import numpy as np
    import soundfile as sf

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use from Python") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    shutil.copytree(tiny_checkpoint.path, tmp_path / "saves" / "kimi-audio-merged")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "clip.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "my-kimi-audio" / "config.json").is_file() and done.stdout.strip().startswith("[")

"""The stock LLaMA-Factory Web UI, driven in headless Chromium (issue 7).

A real ``llamafactory-cli webui`` runs in a subprocess (own CWD, free port, offline); Selenium drives Debian's
Chromium through ChromeDriver. The three tests share one server and one browser page and run in file order:

1. the model list has both Kimi-Audio checkpoints and picking one auto-selects the ``kimi_audio`` template;
2. a LoRA run on the tiny checkpoint started from the Train tab finishes (the Web UI's ``llamafactory-cli train``
   *subprocess* has the registrations) and writes the adapter and ``trainer_log.jsonl``;
3. the Chat tab loads the tiny model (+ that adapter) in-process, takes an uploaded wav and answers. While the
   text head may sample audio-range ids that ``KimiAudioTokenizer`` refuses to decode, generation dies in its
   thread and the page hangs; the test recognises that exact traceback in the server log and xfails.

Screenshots land in ``<pytest tmp>/webui*/shots`` or in ``$KIMI_AUDIO_WEBUI_ARTIFACTS`` when set (CI artefacts).

Needs: ``apt-get install -y chromium chromium-driver`` and ``pip install 'selenium>=4.20'`` (extra
``[webui-test]``); skipped otherwise. About 2-4 minutes on 2 CPUs. Run alone with
``pytest tests/test_webui.py -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webui_helpers import GradioPage, WebUIServer, make_driver, missing_browser_requirements  # noqa: E402

_MISSING = missing_browser_requirements()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_MISSING is not None, reason=f"browser test: {_MISSING}")]

MODEL_NAMES = ("Kimi-Audio-7B-Instruct", "Kimi-Audio-7B")
MODEL_NAME = "Kimi-Audio-7B-Instruct"
TEMPLATE = "kimi_audio"
DATASET = "demo_train"
OUTPUT_NAME = "webui_lora"  # a bare name: the Web UI saves to <cwd>/saves/<model name>/lora/<name>
MAX_STEPS = 3
TRAIN_TIMEOUT = 420.0
LOAD_TIMEOUT = 180.0
CHAT_TIMEOUT = 180.0


def _cli(*args: str, cwd: Path) -> None:
    exe = Path(sys.executable).with_name("kimi-audio-lf")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "llamafactory_kimi_audio.cli", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny checkpoint, demo data set and a fresh Web UI CWD, all made through the package's CLI."""
    root = tmp_path_factory.mktemp("webui")
    _cli("make-tiny", str(root / "tiny"), cwd=root)
    _cli("synth", str(root / "synth"), "--n-train", "16", "--n-test", "4", cwd=root)
    _cli("convert", str(root / "synth" / "train.csv"), "--out-dir", str(root / "data"), "--name", DATASET,
         "--lang", "en", cwd=root)  # fmt: skip
    (root / "cwd").mkdir()
    shots = Path(os.environ.get("KIMI_AUDIO_WEBUI_ARTIFACTS") or root / "shots")
    wav = json.loads((root / "data" / f"{DATASET}.json").read_text())[0]["audios"][0]
    return {"root": root, "tiny": root / "tiny", "data": root / "data", "cwd": root / "cwd", "shots": shots,
            "wav": Path(wav)}  # fmt: skip


@pytest.fixture(scope="module")
def ui(workspace):
    server = WebUIServer(workspace["cwd"], workspace["root"] / "webui.log")
    driver = None
    t0 = time.monotonic()
    try:
        server.start()
        print(f"\n[webui] serving {server.url} after {time.monotonic() - t0:.1f}s (log {server.log_path})")
        driver = make_driver(str(workspace["root"] / "chromium-profile"))
        driver.get(server.url)
        page = GradioPage(driver, workspace["shots"], timeout=60)
        # engine.resume sets lang=en, which relabels everything: wait for a label from locales.py.
        page.block("Model name", timeout=120)
        page.wait(lambda _d: page.dropdown_value("Language") == "en", message="language never set")
        yield {"page": page, "server": server, **workspace}
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
        print(f"[webui] log tail:\n{server.log_tail(2000)}")
        print(f"[webui] screenshots in {workspace['shots']}")


def _ensure_model(page: GradioPage, tiny: Path) -> None:
    if page.dropdown_value("Model name") != MODEL_NAME:
        page.select("Model name", MODEL_NAME)
        page.wait(lambda _d: page.dropdown_value("Chat template") == TEMPLATE, message="template not auto-selected")
    if page.text_of("Model path") != str(tiny):
        page.set_text("Model path", str(tiny))


def test_model_list_and_template(ui):
    page: GradioPage = ui["page"]
    page.screenshot("loaded")
    options = page.dropdown_options("Model name")
    for name in MODEL_NAMES:
        assert name in options, f"{name} missing from the model dropdown"
    assert TEMPLATE in page.dropdown_options("Chat template")
    # Each Kimi-Audio entry auto-selects the template (register_model_group(template=..., multimodal=True)).
    for name in (MODEL_NAMES[1], MODEL_NAMES[0]):
        page.select("Model name", name)
        page.wait(lambda _d: page.dropdown_value("Chat template") == TEMPLATE, message=f"{name}: template")
        page.wait(lambda _d, n=name: page.text_of("Model path") == f"moonshotai/{n}", message=f"{name}: path")
    page.screenshot("model-selected")
    assert not page.error_toasts()


def test_train_tab_lora_run(ui):
    page: GradioPage = ui["page"]
    t0 = time.monotonic()
    page.tab("Train")
    _ensure_model(page, ui["tiny"])

    page.set_text("Data dir", str(ui["data"]))
    page.multiselect("Dataset", DATASET)  # focus -> list_datasets(<Data dir>) -> dataset_info.json keys
    page.set_text("Epochs", "1.0")
    page.select("Compute type", "fp32")  # bf16 on CPU works but is slow; fp32 is the CPU path
    page.set_number("Cutoff length", 512)
    page.set_number("Batch size", 1)
    page.set_number("Gradient accumulation", 1)

    page.open_accordion("Extra configurations")
    page.set_number("Logging steps", 1)
    extra = {"use_cpu": True, "max_steps": MAX_STEPS, "report_to": "none", "preprocessing_num_workers": 1,
             "optim": "adamw_torch", "dataloader_num_workers": 0}  # fmt: skip
    page.set_text("Extra arguments", json.dumps(extra))
    page.open_accordion("LoRA configurations")
    page.set_number("LoRA rank", 4)

    output_box = page.find_visible("css selector", "input[role='listbox'][aria-label='Output dir']")
    page._replace(output_box, OUTPUT_NAME)
    page.wait(lambda _d: page.dropdown_value("Output dir") == OUTPUT_NAME, message="output dir not set")
    page.screenshot("train-configured", page.button("Start"))

    page.click("Start")
    # The status box (gr.Markdown) shows the running log, then "Finished." (or "Failed. Exit code ...").
    page.wait(
        lambda _d: "Finished." in page.body_text() or "Failed." in page.body_text(),
        timeout=TRAIN_TIMEOUT,
        message="training never ended",
    )
    toasts = page.toasts()  # gr.Info("Finished.") from Runner._finalize; also proves the toast selector works
    page.screenshot("train-finished", page.button("Start"))
    text = page.body_text()
    assert "Failed." not in text, f"training failed in the Web UI:\n{text[-3000:]}\n{ui['server'].log_tail()}"

    # The loss plot: gr.Plot renders the matplotlib figure as <div data-testid="matplotlib"><img src="data:...">
    # (its "Loss" title is a data-testid="block-label", not a block-info span). Only the Train tab has a plot.
    plot = page.find_visible("css selector", "[data-testid='matplotlib'] img", timeout=10)
    assert (plot.get_attribute("src") or "").startswith("data:image"), "the loss plot has no image"

    out = ui["cwd"] / "saves" / MODEL_NAME / "lora" / OUTPUT_NAME
    assert (out / "adapter_model.safetensors").is_file(), sorted(p.name for p in out.iterdir())
    assert (out / "adapter_config.json").is_file()
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    assert log and log[-1]["current_steps"] == MAX_STEPS and log[-1]["total_steps"] == MAX_STEPS
    assert any("loss" in entry for entry in log)
    args = (out / "training_args.yaml").read_text()
    assert f"template: {TEMPLATE}" in args and "use_cpu: true" in args
    assert any("Finished." in toast for _title, toast in toasts), toasts
    assert not page.error_toasts()
    print(f"[webui] train stage {time.monotonic() - t0:.1f}s")


def test_chat_tab_audio(ui):
    page: GradioPage = ui["page"]
    t0 = time.monotonic()
    _ensure_model(page, ui["tiny"])
    page.tab("Chat")

    adapter = ui["cwd"] / "saves" / MODEL_NAME / "lora" / OUTPUT_NAME / "adapter_model.safetensors"
    if adapter.is_file():  # the Train stage's adapter; focus -> list_checkpoints(model name, lora)
        page.multiselect("Checkpoint path", OUTPUT_NAME)

    page.click("Load model")
    # The info box (unlabelled gr.Textbox) reads "Loading model..." then "Model loaded, now you can chat...".
    page.wait_for_textbox("Model loaded", timeout=LOAD_TIMEOUT)
    page.screenshot("chat-loaded")

    # The multimodal box (visible because the model is in MULTIMODAL_SUPPORTED_MODELS): Audio sub-tab, upload.
    page.tab("Audio")
    page.upload_audio(ui["wav"])
    page.set_number("Maximum new tokens", 16)
    query = page.find_visible("css selector", "textarea[placeholder='Input...']")
    page.scroll_to(query)
    query.send_keys("Please transcribe the spoken content into written text.")
    page.screenshot("chat-audio-uploaded", query)
    log_offset = ui["server"].log_size()
    page.click("Submit")

    # Generation runs in a thread of the Web UI process; if it dies the page just spins forever (no toast), so
    # watch the server log for a traceback while waiting for the assistant bubble.
    def answered_or_crashed(_d):
        if "Traceback" in ui["server"].log_since(log_offset):
            return "crashed"
        return "answered" if page.chat_settled() else False

    outcome = page.wait(answered_or_crashed, timeout=CHAT_TIMEOUT, message="no answer and no traceback")
    page.screenshot(f"chat-{outcome}", page.find_visible("css selector", "textarea[placeholder='Input...']"))
    if outcome == "crashed":
        log = ui["server"].log_since(log_offset)
        if "is outside the vocabulary" in log:
            # Known package bug (reported with issue 7): the text head spans the whole vocabulary (text + audio
            # ids); a sampled audio id (>= kimia_text_output_vocab) makes KimiAudioTokenizer._decode raise inside
            # TextIteratorStreamer.put, the generate thread dies and the Chat tab hangs. Remove once fixed.
            pytest.xfail("generation sampled an audio-range id; KimiAudioTokenizer.decode raised (see log)")
        pytest.fail(f"chat generation crashed in the Web UI process:\n{log[-4000:]}")

    bubbles = page.driver.find_elements("css selector", "[data-testid='bot']")
    assert bubbles, "no assistant bubble"
    assert not page.error_toasts(), page.error_toasts()
    print(f"[webui] chat stage {time.monotonic() - t0:.1f}s, answer: {bubbles[-1].text!r}")

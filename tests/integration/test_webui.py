"""The stock LLaMA-Factory Web UI, driven in headless Chromium (issue 7).

A real ``llamafactory-cli webui`` runs in a subprocess (own CWD, free port, offline); Selenium drives Debian's
Chromium through ChromeDriver. The tests share one server and one browser page and run in file order:

1. the model list has both Kimi-Audio checkpoints and picking one auto-selects the ``kimi_audio`` template;
2. Train tab: with the repository's ``dataset_info/`` as data dir the dataset list shows the bundled demo set
   (``kimi_audio_demo_train`` / ``kimi_audio_demo_test``); a LoRA run on the tiny checkpoint and the demo train
   split finishes (the Web UI's ``llamafactory-cli train`` *subprocess* has the registrations), plots the loss and
   writes the adapter and ``trainer_log.jsonl``;
3. Evaluate & Predict tab: predict with that adapter on ``kimi_audio_demo_test``; the page and the output dir's
   ``all_results.json`` / ``predict_results.json`` report ``predict_cer`` / ``predict_wer``. The tab has no
   extra-arguments box, so ``use_cpu`` cannot be passed: on a CPU-only machine transformers picks the CPU anyway;
4. the Chat tab loads the tiny model (+ that adapter) in-process, takes an uploaded wav and answers in text only
   (no detokenizer: no audio player in the conversation);
5. Export tab: merging the adapter (in the Web UI process) writes the official Kimi-Audio layout, which
   ``KimiAudioForCausalLM.from_pretrained`` reloads;
6. the Chat tab on a tiny checkpoint with ``audio_detokenizer/`` + ``vocoder/``: the answer's text, then its
   spoken answer as an ``<audio>`` player in the conversation (issue 26 item 5).

Screenshots land in ``<pytest tmp>/webui*/shots`` or in ``$KIMI_AUDIO_WEBUI_ARTIFACTS`` when set (CI artefacts);
with ``KIMI_AUDIO_WEBUI_DOCS=1`` the ``train-finished-page`` one also refreshes ``docs/webui_train.png`` (README).

Needs: ``apt-get install -y chromium chromium-driver`` and ``pip install 'selenium>=4.20'`` (extra
``[webui-test]``); skipped otherwise. About 2-4 minutes on 2 CPUs. Run alone with
``pytest tests/integration/test_webui.py -rxs``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from webui_helpers import GradioPage, WebUIServer, make_driver, missing_browser_requirements  # noqa: E402

_MISSING = missing_browser_requirements()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_MISSING is not None, reason=f"browser test: {_MISSING}")]

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_DIR = REPO_ROOT / "dataset_info"  # the bundled demo set; wav paths in it are relative to this dir
TRAIN_SET, TEST_SET = "kimi_audio_demo_train", "kimi_audio_demo_test"
MODEL_NAMES = ("Kimi-Audio-7B-Instruct", "Kimi-Audio-7B")
MODEL_NAME = "Kimi-Audio-7B-Instruct"
TEMPLATE = "kimi_audio"
OUTPUT_NAME = "webui_lora"  # a bare name: the Web UI saves to <cwd>/saves/<model name>/lora/<name>
PREDICT_NAME = "webui_predict"  # Evaluate tab output dir, same rule
MAX_STEPS = 3
PREDICT_SAMPLES = 4
TRAIN_TIMEOUT = 900.0
PREDICT_TIMEOUT = 600.0
LOAD_TIMEOUT = 180.0
CHAT_TIMEOUT = 180.0
EXPORT_TIMEOUT = 180.0
DOCS_SHOT = REPO_ROOT / "docs" / "webui_train.png"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_checkpoint, tiny_speaking_checkpoint):
    """Tiny checkpoints (``conftest``: without and with the detokenizer), the bundled demo data set and a fresh Web UI
    CWD."""
    root = tmp_path_factory.mktemp("webui")
    (root / "cwd").mkdir()
    shots = Path(os.environ.get("KIMI_AUDIO_WEBUI_ARTIFACTS") or root / "shots")
    wav = DATASET_DIR / json.loads((DATASET_DIR / f"{TEST_SET}.json").read_text())[1]["audios"][0]  # English
    assert wav.is_file(), wav
    tiny, speaking = Path(tiny_checkpoint.path), Path(tiny_speaking_checkpoint.path)
    return {"root": root, "tiny": tiny, "speaking": speaking, "cwd": root / "cwd", "shots": shots, "wav": wav}


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


def _adapter_dir(ui) -> Path:
    return ui["cwd"] / "saves" / MODEL_NAME / "lora" / OUTPUT_NAME


def _need_adapter(ui) -> Path:
    adapter = _adapter_dir(ui)
    if not (adapter / "adapter_model.safetensors").is_file():
        pytest.skip("no adapter: the Train stage did not run or failed")
    return adapter


def _tab_with_adapter(ui, tab: str) -> GradioPage:
    """``tab`` open on the tiny model with the Train stage's adapter selected (skips when there is none)."""
    page: GradioPage = ui["page"]
    _need_adapter(ui)
    _ensure_model(page, ui["tiny"])
    page.tab(tab)
    page.multiselect("Checkpoint path", OUTPUT_NAME)  # top.checkpoint_path: focus -> list_checkpoints
    return page


def _start_and_wait(ui, done: str, timeout: float, what: str, shot: str) -> tuple[str, list]:
    """Click Start and wait until the page shows ``done`` or "Failed."; (page text, toasts), asserting no failure."""
    page: GradioPage = ui["page"]
    page.click("Start")
    page.wait(
        lambda _d: done in page.body_text() or "Failed." in page.body_text(),
        timeout=timeout,
        message=f"{what} never ended",
    )
    toasts = page.toasts()  # read at once: a toast disappears after a few seconds
    page.screenshot(shot, page.button("Start"))
    text = page.body_text()
    assert "Failed." not in text, f"{what} failed in the Web UI:\n{text[-3000:]}\n{ui['server'].log_tail()}"
    return text, toasts


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

    page.set_text("Data dir", str(DATASET_DIR))
    # focus -> list_datasets(<Data dir>, stage) -> the dataset_info.json keys of that stage (sft: both entries)
    listed = page.multiselect_options("Dataset", (TRAIN_SET, TEST_SET), shot="train-dataset-list")
    assert TRAIN_SET in listed and TEST_SET in listed, listed
    page.multiselect("Dataset", TRAIN_SET)
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

    # The status box (gr.Markdown) shows the running log, then "Finished." (or "Failed. Exit code ...").
    # The toasts include gr.Info("Finished.") from Runner._finalize; also proves the toast selector works.
    _, toasts = _start_and_wait(ui, "Finished.", TRAIN_TIMEOUT, "training", "train-finished")

    # The loss plot: gr.Plot renders the matplotlib figure as <div data-testid="matplotlib"><img src="data:...">
    # (its "Loss" title is a data-testid="block-label", not a block-info span). Only the Train tab has a plot.
    plot = page.find_visible("css selector", "[data-testid='matplotlib'] img", timeout=10)
    assert (plot.get_attribute("src") or "").startswith("data:image"), "the loss plot has no image"
    # README picture: accordions closed, the page from the top (model, template, data set) down to the loss plot,
    # "Finished." and the first lines of the running log.
    page.close_accordion("Extra configurations")
    page.close_accordion("LoRA configurations")
    plot_block = page.find_visible("css selector", "[data-testid='matplotlib']")
    _docs_screenshot(page.full_page_screenshot("train-finished-page", until=plot_block, margin=220))

    out = _adapter_dir(ui)
    assert (out / "adapter_model.safetensors").is_file(), sorted(p.name for p in out.iterdir())
    assert (out / "adapter_config.json").is_file()
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    assert log and log[-1]["current_steps"] == MAX_STEPS and log[-1]["total_steps"] == MAX_STEPS
    assert any("loss" in entry for entry in log)
    args = (out / "training_args.yaml").read_text()
    assert f"template: {TEMPLATE}" in args and "use_cpu: true" in args
    assert f"dataset: {TRAIN_SET}" in args and f"dataset_dir: {DATASET_DIR}" in args
    assert any("Finished." in toast for _title, toast in toasts), toasts
    assert not page.error_toasts()
    print(f"[webui] train stage {time.monotonic() - t0:.1f}s")


def _docs_screenshot(shot: Path, max_bytes: int = 300_000) -> None:
    """Refresh ``docs/webui_train.png`` (README) from ``shot`` when ``KIMI_AUDIO_WEBUI_DOCS=1``: the top of the
    page (model, template, data set, loss plot), downscaled until it fits ``max_bytes``."""
    if os.environ.get("KIMI_AUDIO_WEBUI_DOCS") != "1":
        return
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    width = 1000
    while True:
        small = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        tmp = DOCS_SHOT.with_suffix(".tmp.png")
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        small.save(tmp, "PNG", optimize=True)
        if tmp.stat().st_size <= max_bytes or width <= 600:
            tmp.replace(DOCS_SHOT)
            return
        width -= 100


def test_evaluate_tab_predict_cer_wer(ui):
    t0 = time.monotonic()
    page = _tab_with_adapter(ui, "Evaluate & Predict")

    page.set_text("Data dir", str(DATASET_DIR))
    listed = page.multiselect_options("Dataset", (TRAIN_SET, TEST_SET))
    assert TEST_SET in listed, listed
    page.multiselect("Dataset", TEST_SET)
    page.set_number("Cutoff length", 512)
    page.set_text("Max samples", str(PREDICT_SAMPLES))
    page.set_number("Batch size", PREDICT_SAMPLES)
    page.set_number("Maximum new tokens", 8)  # the slider's minimum
    page.set_text("Output dir", PREDICT_NAME)  # a textbox here (a dropdown on the Train tab)
    page.screenshot("predict-configured", page.button("Start"))

    # Finished: the status box shows all_results.json as a JSON block; failed: "Failed. Exit code ...".
    text, _ = _start_and_wait(ui, "predict_cer", PREDICT_TIMEOUT, "prediction", "predict-finished")
    assert "predict_wer" in text, text[-3000:]

    out = ui["cwd"] / "saves" / MODEL_NAME / "lora" / PREDICT_NAME
    for name in ("all_results.json", "predict_results.json"):
        metrics = json.loads((out / name).read_text())
        assert {"predict_cer", "predict_wer"} <= set(metrics), (name, metrics)
        assert all(isinstance(metrics[key], (int, float)) for key in ("predict_cer", "predict_wer"))
        assert not [key for key in metrics if "bleu" in key or "rouge" in key], metrics
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == PREDICT_SAMPLES and all({"predict", "label"} <= set(row) for row in rows)
    args = (out / "training_args.yaml").read_text()
    assert (
        f"eval_dataset: {TEST_SET}" in args and f"adapter_name_or_path: saves/{MODEL_NAME}/lora/{OUTPUT_NAME}" in args
    )
    # The Evaluate tab cannot pass use_cpu (no extra-arguments box); with no accelerator transformers uses the
    # CPU by itself, which is how this predict ran here.
    assert "use_cpu" not in args
    # ...and the device transformers picks for these arguments without use_cpu (the subprocess logs it only to
    # its stderr, which the Web UI discards on success): the CPU when no accelerator is present.
    import torch
    from transformers import TrainingArguments

    device = TrainingArguments(output_dir=str(ui["root"] / "device-probe"), report_to="none").device
    if not torch.accelerator.is_available():
        assert device.type == "cpu", device
    print(f"[webui] predict stage {time.monotonic() - t0:.1f}s on {device}, metrics {metrics}")
    assert not page.error_toasts()


def test_chat_tab_audio(ui):
    page: GradioPage = ui["page"]
    t0 = time.monotonic()
    _ensure_model(page, ui["tiny"])
    page.tab("Chat")

    if (_adapter_dir(ui) / "adapter_model.safetensors").is_file():  # focus -> list_checkpoints(model, lora)
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
    assert outcome == "answered", (
        f"chat generation crashed in the Web UI process:\n{ui['server'].log_since(log_offset)[-4000:]}"
    )

    bubbles = page.driver.find_elements("css selector", "[data-testid='bot']")
    assert bubbles, "no assistant bubble"
    assert not _bot_audio(page), "a checkpoint without audio_detokenizer/ + vocoder/ must chat in text only"
    assert not page.error_toasts(), page.error_toasts()
    print(f"[webui] chat stage {time.monotonic() - t0:.1f}s, answer: {bubbles[-1].text!r}")


def test_export_tab_merges_adapter(ui):
    from safetensors import safe_open

    t0 = time.monotonic()
    page = _tab_with_adapter(ui, "Export")
    export_dir = ui["root"] / "exported"
    page.set_text("Export dir", str(export_dir))
    page.screenshot("export-configured", page.button("Export"))

    page.click("Export")
    # save_model() runs export_model() in the Web UI process; the unlabelled info box ends with "Model exported."
    # An exception shows an Error toast; a refused form (no adapter, bad JSON...) a Warning toast.
    page.wait(
        lambda _d: (
            any("Model exported." in v for v in page.textbox_values())
            or [t for t in page.toasts() if t[0].lower().startswith(("error", "warning"))]
        ),
        timeout=EXPORT_TIMEOUT,
        message="export never finished",
    )
    page.screenshot("export-finished", page.button("Export"))
    assert any("Model exported." in v for v in page.textbox_values()), f"{page.toasts()}\n{ui['server'].log_tail()}"

    config = json.loads((export_dir / "config.json").read_text())
    assert config["model_type"] == "moonshot_kimia", config.get("model_type")
    assert config["auto_map"] == json.loads((ui["tiny"] / "config.json").read_text())["auto_map"]
    shards = sorted(export_dir.glob("*.safetensors"))
    assert shards, sorted(p.name for p in export_dir.iterdir())
    assert (export_dir / "whisper-large-v3" / "model.safetensors").is_file()
    assert (export_dir / "whisper-large-v3" / "preprocessor_config.json").is_file()
    assert (export_dir / "tiktoken.model").is_file()
    assert not list(export_dir.glob("*.py")), "the export must not carry copies of this package's modules"
    keys = set()
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            keys.update(f.keys())
    assert not [key for key in keys if "lora_" in key or key.startswith("base_model.")], "adapter not merged"

    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    model, info = KimiAudioForCausalLM.from_pretrained(str(export_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    base = KimiAudioForCausalLM.from_pretrained(str(ui["tiny"]))
    merged, original = dict(model.named_parameters()), dict(base.named_parameters())
    changed = [name for name in original if not torch_equal(merged[name], original[name])]
    assert changed, "the exported weights equal the base checkpoint: the LoRA adapter was not merged"
    print(f"[webui] export stage {time.monotonic() - t0:.1f}s, {len(changed)} merged tensors differ from the base")


def _bot_audio(page: GradioPage) -> list:
    """The ``<audio>`` elements inside assistant messages of the conversation."""
    return page.driver.find_elements("css selector", "[data-testid='bot'] audio")


def test_chat_tab_speaks(ui):
    page: GradioPage = ui["page"]
    t0 = time.monotonic()
    _ensure_model(page, ui["tiny"])
    page.tab("Chat")
    if any("Model loaded" in value for value in page.textbox_values()):  # test 4's model: unload it first
        page.click("Unload model")
        page.wait_for_textbox("Model unloaded", timeout=LOAD_TIMEOUT)
    page.set_text("Model path", str(ui["speaking"]))  # a kept adapter of test 2 fits it too (same tiny shapes)
    page.click("Load model")
    page.wait_for_textbox("Model loaded", timeout=LOAD_TIMEOUT)
    page.set_number("Maximum new tokens", 60)  # also caps the spoken answer's decoding steps
    query = page.find_visible("css selector", "textarea[placeholder='Input...']")
    page.scroll_to(query)
    query.send_keys("Answer:")
    log_offset = ui["server"].log_size()
    page.click("Submit")

    def spoke_or_failed(_d):
        if "Traceback" in ui["server"].log_since(log_offset):
            return "crashed"
        if [text for title, text in page.toasts() if "spoken answer" in text]:
            return "no voice"
        return "spoke" if _bot_audio(page) and page.chat_settled() else False

    outcome = page.wait(spoke_or_failed, timeout=CHAT_TIMEOUT, message="no spoken answer, no warning, no traceback")
    page.scroll_to(_bot_audio(page)[-1] if _bot_audio(page) else query)
    page.screenshot(f"chat-{outcome}")
    assert outcome == "spoke", f"{page.toasts()}\n{ui['server'].log_since(log_offset)[-4000:]}"
    bubbles = page.driver.find_elements("css selector", "[data-testid='bot']")
    assert len(bubbles) >= 2 and bubbles[-2].text.strip(), "the text answer must stay next to the audio"
    player = _bot_audio(page)[-1]
    urls = page.driver.execute_script(  # the player plays through wavesurfer; its download link is the wav
        "const bot = arguments[0].closest('[data-testid=bot]');"
        "return [...bot.querySelectorAll('audio, source, a')].map(e => e.currentSrc || e.src || e.href || '');",
        player,
    )
    source = next((url for url in urls if ".wav" in url), "")
    html = page.driver.execute_script("return arguments[0].closest('[data-testid=bot]').outerHTML;", player)
    assert source, f"no wav URL in the spoken answer's message: {urls}\n{html[:3000]}"
    assert not page.error_toasts(), page.error_toasts()
    print(f"[webui] spoken chat stage {time.monotonic() - t0:.1f}s, text: {bubbles[-2].text!r}, audio {source}")


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.equal(a, b)

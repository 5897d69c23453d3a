"""``fp8: true`` (issue 28): which layers go to FP8, the FP8 layer's math, the fused LoRA forward through it, the
refusal on a machine without FP8 tensor cores through the real ``llamafactory-cli train``, and (CUDA with FP8 only)
a few training steps against bf16.

On the CPU the FP8 math is emulated in fp32 from the FP8 values (``KIMI_AUDIO_FP8_EMULATE``, tests only): the values,
scales and the folding of the weight's scales into the gradient are the ones the GPU runs."""

from __future__ import annotations

import copy
import importlib.util
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llamafactory_kimi_audio.models import fp8_linear
from llamafactory_kimi_audio.models.fp8_linear import (
    FrozenFloat8Linear,
    convert_decoder_linears,
    fp8_device_problem,
    is_decoder_linear,
)
from llamafactory_kimi_audio.models.fused_lora import install_fused_lora

torch.set_num_threads(min(2, torch.get_num_threads()))
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HAS_FP8_GPU = torch.cuda.is_available() and fp8_device_problem() is None


def lora_model(model, seed: int = 0):
    """LoRA on every projection of the decoder and of the MIMO branch (the filter must still pick the decoder's
    base layers only), B random so that gradients reach A too; the fused forward as LLaMA-Factory installs it."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(PROJECTIONS), init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    assert install_fused_lora(peft_model) > 0
    return peft_model


def test_filter_selects_the_decoder_base_layers_only(tiny_model):
    peft_model = lora_model(tiny_model)
    picked = {name for name, module in peft_model.named_modules() if is_decoder_linear(module, name)}
    layers = tiny_model.config.num_hidden_layers
    block = {p: "self_attn" if p in PROJECTIONS[:4] else "mlp" for p in PROJECTIONS}
    expected = {
        f"base_model.model.model.layers.{i}.{block[p]}.{p}.base_layer" for i in range(layers) for p in PROJECTIONS
    }
    assert picked == expected
    linear_names = [n for n, m in peft_model.named_modules() if isinstance(m, torch.nn.Linear)]
    left_out = set(linear_names) - picked  # LoRA A/B, Whisper, adaptor, MIMO (with its LoRA), heads
    for part in ("lora_A", "lora_B", "whisper_encoder", "vq_adaptor", "mimo_layers", "lm_head", "mimo_output"):
        assert any(part in name for name in left_out), part
    # the bare model: the projections themselves
    bare = {name for name, module in tiny_model.named_modules() if is_decoder_linear(module, name)}
    assert len(bare) == layers * len(PROJECTIONS) and all(n.startswith("model.layers.") for n in bare)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")
def test_torchao_with_the_filter_converts_the_same_layers(tiny_model):
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    peft_model = lora_model(tiny_model)
    expected = {name for name, module in peft_model.named_modules() if is_decoder_linear(module, name)}
    convert_to_float8_training(peft_model, module_filter_fn=is_decoder_linear)
    converted = {name for name, module in peft_model.named_modules() if isinstance(module, Float8Linear)}
    assert converted == expected


def test_conversion_keeps_everything_else_and_quantises_once(tiny_model):
    peft_model = lora_model(tiny_model)
    before = {name: type(m) for name, m in peft_model.named_modules()}
    done = convert_decoder_linears(peft_model)
    assert len(done["frozen"]) == tiny_model.config.num_hidden_layers * len(PROJECTIONS) and not done["trainable"]
    after = {name: type(m) for name, m in peft_model.named_modules()}
    changed = {name for name in before if before[name] is not after.get(name)}
    assert changed == set(done["frozen"]) and all(after[n] is FrozenFloat8Linear for n in changed)
    layer = peft_model.get_submodule(done["frozen"][0])
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_fp8.shape == layer.weight.shape
    assert layer.weight_t_fp8.dtype == torch.float8_e4m3fn and layer.weight_t_fp8.shape == layer.weight.t().shape
    assert layer.weight_t_fp8.is_contiguous()  # W^T stored row-major: the backward GEMM needs no transpose
    assert set(layer.state_dict()) == {"weight", "bias"}  # checkpoints and adapters never see the FP8 copies
    assert not any(t.dtype == torch.float8_e4m3fn for t in peft_model.buffers())  # nor DDP's buffer broadcast
    assert convert_decoder_linears(peft_model)["frozen"] == []  # idempotent
    # quantised once: the FP8 copy is the same storage after training steps, and no weight gradient is computed
    pointer = layer.weight_fp8.data_ptr()
    ids = torch.randint(0, tiny_model.config.num_base_tokens, (2, 10))
    for _ in range(2):
        peft_model(input_ids=ids, labels=ids).loss.backward()
    assert layer.weight_fp8.data_ptr() == pointer and layer.weight.grad is None


def test_fp8_layer_matches_the_bf16_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 192, bias=True).requires_grad_(False)
    fp8 = FrozenFloat8Linear.from_linear(linear)
    assert fp8.emulate == (fp8_device_problem(linear.weight.device) is not None)
    x = torch.randn(3, 7, 256) * 4
    x_ref, x_fp8 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y = linear(x_ref), fp8(x_fp8)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y.backward(grad)
    for got, want in ((y, y_ref), (x_fp8.grad, x_ref.grad)):
        rel = (got - want).norm() / want.norm()
        assert 1e-4 < rel < 0.06, rel  # FP8 (e4m3) rounding: a few percent, never exact
    assert fp8.weight.grad is None and linear.bias.grad is None


def test_steps_never_read_the_parked_bf16_weight(tiny_model):
    """``park_bf16_weights`` (at train begin, KIMI_AUDIO_PARK_IDLE): parked to the meta device, where any read would
    fail, a LoRA step still runs and gives the same loss and gradients; the weight stays registered."""
    peft_model = lora_model(tiny_model)
    convert_decoder_linears(peft_model)
    parked = copy.deepcopy(peft_model)
    moved = fp8_linear.park_bf16_weights(parked, "meta")
    layers = [m for m in parked.modules() if isinstance(m, FrozenFloat8Linear)]
    assert moved == sum(m.weight.numel() * m.weight.element_size() for m in layers) > 0
    assert all(m.weight.is_meta and not m.weight_fp8.is_meta for m in layers)
    assert fp8_linear.park_bf16_weights(parked, "meta") == 0  # idempotent
    parked.to("cpu")  # as the trainer's model.to(device): a parked weight stays parked, the FP8 copies move
    assert all(m.weight.is_meta and m.weight_fp8.device.type == "cpu" for m in layers)
    ids = torch.randint(0, tiny_model.config.num_base_tokens, (2, 12))
    results = []
    for model in (peft_model, parked):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for want, got in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, want)
    assert {n for n, _ in parked.named_parameters()} == {n for n, _ in peft_model.named_parameters()}


@pytest.mark.parametrize("hide", [True, False])
def test_ddp_wraps_a_model_with_parked_weights_and_never_broadcasts_the_fp8_copies(tiny_model, tmp_path, hide):
    """DDP checks that all parameters share a device type and broadcasts every parameter at start and every buffer
    before each forward: the parked bf16 weights are left out by name (the integration's opt-out; parked on the meta
    device here, where a broadcast fails), and the FP8 copies are not buffers."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from llamafactory_kimi_audio.integration import fp8

    model = lora_model(tiny_model)
    convert_decoder_linears(model, park_to="meta")
    if hide:
        fp8._hide_parked_weights_from_ddp(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        if not hide:
            with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
                DistributedDataParallel(model)
            return
        ddp = DistributedDataParallel(model)
        assert not any(b.dtype == torch.float8_e4m3fn for b in ddp.modules_buffers)
        ids = torch.randint(0, tiny_model.config.num_base_tokens, (2, 12))
        ddp(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n and ".model.layers." in n)
    finally:
        dist.destroy_process_group()


def one_projection_model(bias: bool = False) -> torch.nn.Module:
    """The smallest module tree the decoder filter picks: ``model.layers.0.mlp.down_proj`` (256 → 192, frozen)."""
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.model.layers[0].mlp = torch.nn.Module()
    model.model.layers[0].mlp.down_proj = torch.nn.Linear(256, 192, bias=bias).requires_grad_(False)
    return model


@pytest.mark.parametrize("matmuls", ["forward", "backward"])
def test_one_direction_in_fp8_the_other_exactly_bf16(matmuls):
    """KIMI_AUDIO_FP8_MATMULS=forward: the input gradient is exactly dy @ W; =backward: the output is exactly x W^T.
    The other direction is FP8 (a few percent off, never exact); only its FP8 copy is kept; the weight stays."""
    torch.manual_seed(0)
    model = one_projection_model()
    linear = model.model.layers[0].mlp.down_proj
    done = convert_decoder_linears(model, matmuls=matmuls, fast_accum="off")
    layer = model.model.layers[0].mlp.down_proj
    assert done["frozen"] == ["model.layers.0.mlp.down_proj"] and isinstance(layer, FrozenFloat8Linear)
    assert (layer.matmuls, layer.fast_accum) == (matmuls, "off") and f"FP8 {matmuls}" in repr(layer)
    assert (layer.weight_fp8 is None) == (matmuls == "backward") and (layer.weight_t_fp8 is None) == (
        matmuls == "forward"
    )
    assert not layer.weight_is_idle and fp8_linear.park_bf16_weights(model, "meta") == 0  # the weight is read
    x = (torch.randn(5, 256) * 3).requires_grad_(True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    exact_y, exact_dx = x.detach() @ linear.weight.t(), grad @ linear.weight
    fp8_part, exact_part = ((y, exact_y), (x.grad, exact_dx))[:: 1 if matmuls == "forward" else -1]
    torch.testing.assert_close(*exact_part)  # the bf16 weight, not an FP8 copy
    rel = (fp8_part[0] - fp8_part[1]).norm() / fp8_part[1].norm()
    assert 1e-4 < rel < 0.06, rel


def test_centering_keeps_the_common_part_of_the_tokens_out_of_the_fp8_rounding():
    """Tokens that share a large common vector (as the random benchmark model's attention outputs do): without
    centring the FP8 error is a few percent of the whole output, i.e. large against what differs between tokens;
    with it the error scales with the token-varying part only. The input gradient is the same either way."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 192, bias=True).requires_grad_(False)
    x = torch.randn(1, 256) * 3 + torch.randn(64, 256) * 0.3  # 99% of the energy in the mean token
    exact = linear(x)
    varying = exact - exact.mean(0, keepdim=True)
    errors = {}
    for center in (False, True):
        fp8 = FrozenFloat8Linear.from_linear(linear)
        fp8.center = center
        x_in = x.clone().requires_grad_(True)
        y = fp8(x_in)
        y.backward(torch.ones_like(y))
        errors[center] = float((y.detach() - exact).norm() / varying.norm())
        rel_grad = (x_in.grad - torch.ones_like(y) @ linear.weight).norm() / (
            torch.ones_like(y) @ linear.weight
        ).norm()
        assert rel_grad < 0.06
    assert errors[True] < 0.06 < errors[False]
    assert errors[True] < errors[False] / 3


def test_fused_lora_forward_runs_the_fp8_base_layer(tiny_model, monkeypatch):
    peft_model = lora_model(tiny_model)
    reference = copy.deepcopy(peft_model)
    convert_decoder_linears(peft_model)
    calls = []
    real = fp8_linear._FrozenFp8Matmul.apply
    monkeypatch.setattr(fp8_linear._FrozenFp8Matmul, "apply", lambda *a: calls.append(1) or real(*a))
    ids = torch.randint(0, tiny_model.config.num_base_tokens, (2, 12))
    losses, grads = [], []
    for model in (reference, peft_model):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert len(calls) == tiny_model.config.num_hidden_layers * len(PROJECTIONS)  # every decoder projection, once
    assert abs(losses[0] - losses[1]) / losses[0] < 0.01
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


# ------------------------------------------------------------------ the stock CLI: refusal on CPU, emulated training
@pytest.mark.slow
def test_cli_refuses_fp8_without_fp8_hardware(tiny_checkpoint, tmp_path):
    """``fp8: true`` on a machine without FP8 hardware is refused; the same recipe with the FP8 math emulated trains,
    packed rows and the fused LoRA forward included (two independent runs, side by side)."""
    from lf_runs import make_asr_dataset, run_cli_each, train_config

    data = make_asr_dataset(tmp_path)
    config = train_config(tiny_checkpoint.path, data, tmp_path / "out", finetuning_type="lora", lora_target="all")
    packed = dict(config, output_dir=str(tmp_path / "out_emulated"), packing=True, neat_packing=True, max_steps=2)
    runs = run_cli_each(
        "train",
        {"fp8": dict(config, fp8=True), "fp8_emulated": dict(packed, fp8=True)},
        tmp_path,
        {"fp8_emulated": {"KIMI_AUDIO_FP8_EMULATE": "1"}},
    )
    rc, output = runs["fp8"]
    last = output.strip().splitlines()[-1]
    assert rc == 4, output[-3000:]
    assert re.match(
        r"llamafactory-cli: fp8: true needs an NVIDIA GPU with FP8 tensor cores .*; remove fp8: true", last
    )
    assert "Traceback" not in output and not (tmp_path / "out" / "adapter_model.safetensors").exists()
    rc, output = runs["fp8_emulated"]
    assert rc == 0, output[-3000:]
    layers = re.search(r"fp8: (\d+) frozen decoder Linear layers run FP8 GEMMs", output)
    assert layers and int(layers.group(1)) > 0, output[-3000:]
    assert (tmp_path / "out_emulated" / "adapter_model.safetensors").exists()


# ----------------------------------------------------------------------------- CUDA with FP8 tensor cores only
@pytest.mark.slow
@pytest.mark.skipif(not HAS_FP8_GPU, reason="needs a CUDA GPU with FP8 tensor cores (capability >= 8.9)")
def test_cli_trains_fp8_on_a_cuda_fp8_gpu(tiny_checkpoint, tmp_path):
    """The stock ``llamafactory-cli train`` with ``fp8: true`` on the GPU (real FP8 GEMMs, compiled layers as the
    recipes' ``auto``, packing): the decoder converted, the bf16 weights parked as they are quantised, finite losses,
    an adapter."""
    from lf_runs import logged_losses, make_asr_dataset, run_cli, train_config

    data = make_asr_dataset(tmp_path)
    config = train_config(tiny_checkpoint.path, data, tmp_path / "out", finetuning_type="lora", lora_target="all")
    config.update(use_cpu=False, bf16=True, fp8=True, packing=True, neat_packing=True, max_steps=4)
    rc, output = run_cli("train", config, tmp_path, "fp8_gpu", env={"CUDA_VISIBLE_DEVICES": "0"})
    assert rc == 0, output[-3000:]
    assert re.search(r"fp8: \d+ frozen decoder Linear layers run FP8 GEMMs .*bf16 weights kept in host memory", output)
    losses = logged_losses(tmp_path / "out")
    assert len(losses) == 4 and all(0 < loss < 100 for loss in losses), losses
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(not HAS_FP8_GPU, reason="needs a CUDA GPU with FP8 tensor cores (capability >= 8.9)")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_fp8_steps_follow_bf16(tiny_model, compiled):
    """Six SGD steps of LoRA on the tiny model in bf16, from one start: FP8 losses within 2% (relative) of bf16's
    at every step, step-1 LoRA gradients with cosine similarity >= 0.99; the compiled layer (as the recipes run it)
    gives the same."""
    ids = torch.randint(0, tiny_model.config.num_base_tokens, (4, 64), generator=torch.Generator().manual_seed(1))
    ids = ids.cuda()
    runs = []
    for fp8 in (False, True):
        model = lora_model(copy.deepcopy(tiny_model).to(torch.bfloat16)).cuda()
        if fp8:
            convert_decoder_linears(model)
        if compiled:
            for layer in model.base_model.model.model.layers:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-2)
        losses, first = [], None
        for _ in range(6):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            grads = [p.grad.float().flatten() for p in params if p.grad is not None]  # the MIMO branch idles
            first = first if first is not None else torch.cat(grads)
            losses.append(loss.item())
            opt.step()
        runs.append((losses, first))
    (bf16_losses, bf16_grad), (fp8_losses, fp8_grad) = runs
    assert torch.nn.functional.cosine_similarity(bf16_grad, fp8_grad, dim=0) >= 0.99
    for a, b in zip(bf16_losses, fp8_losses):
        assert abs(a - b) / a < 0.02, (bf16_losses, fp8_losses)


@pytest.mark.parametrize(
    ("recipe", "code", "words"),
    [
        ({"fp8": True, "use_cpu": True}, 4, ("needs an NVIDIA GPU with FP8 tensor cores", "use_cpu: true")),
        ({"fp8": "true", "fp8_backend": "te"}, 2, ("fp8_backend: te would convert every Linear", "torchao")),
        ({"fp8": True, "quantization_bit": 4}, 2, ("quantization_bit: 4 exclude each other",)),
        ({"fp8": True, "use_hyper_parallel": True}, 2, ("use_hyper_parallel: true would train in bf16",)),
        ({"fp8": True, "finetuning_type": "full", "emulate": True}, 4, ("torchao is not installed", "lora")),
        ({"fp8": False, "use_cpu": True}, 0, ()),
    ],
)
def test_recipe_checks_before_the_model_loads(recipe, code, words, monkeypatch):
    from llamafactory_kimi_audio import settings
    from llamafactory_kimi_audio.errors import KimiAudioError
    from llamafactory_kimi_audio.integration import fp8

    monkeypatch.setattr(fp8, "torchao_available", lambda: False)
    if recipe.pop("emulate", False):
        monkeypatch.setenv("KIMI_AUDIO_FP8_EMULATE", "1")
    settings.reload()
    try:
        if code == 0:
            fp8.check_fp8_recipe(recipe)
            return
        with pytest.raises(KimiAudioError) as err:
            fp8.check_fp8_recipe(recipe)
        assert err.value.exit_code == code and all(w in str(err.value) for w in words), str(err.value)
        assert "\n" not in str(err.value)
    finally:
        monkeypatch.delenv("KIMI_AUDIO_FP8_EMULATE", raising=False)
        settings.reload()

#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md, from the repository root on a 2 × H200 machine (device kind
# nvidia-h200-x2), with the wheels of .whl/ (see RESULTS.md, "Environment"):
#   bash benchmarks/gpu_run.sh bench   # GPU 0: bench_train.py; GPU 1: bench_precompute.py, then the saved checkpoint
#   bash benchmarks/gpu_run.sh dist    # all GPUs: bench_dist.py (issue 19: the packed recipe, DDP / ZeRO-2 / ZeRO-3 /
#                                      # offload and their knobs; DIST_ARGS="--cases ..." picks some, see RESULTS.md)
#   bash benchmarks/gpu_run.sh pscale  # all GPUs: distributed precompute scaling on 1, 2, 4, 8 ranks (issue 19)
#   bash benchmarks/gpu_run.sh scale   # GPU 0: bench_scale.py (issue 20), SCALE_HOURS=1,10 by default
#   bash benchmarks/gpu_run.sh eval    # GPU 0: the CUDA tests of the fast decoder, then bench_eval.py (issue 21)
# On a one-GPU machine (nvidia-h200) set SKIP_PRECOMPUTE=1 SKIP_DIST_PREPARE=1 for `bench` (the GPU 1 jobs).
# Results land in $OUT (default /tmp/bench_out). Each phase re-creates what it needs if the machine is fresh.
set -uo pipefail
PHASE=${1:?bench, dist, pscale or scale}
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false BENCH_WORK=/tmp/kimi_bench
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

if [ "$(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null)" != "5.6.0" ] \
    || ! python3 -c 'import llamafactory_kimi_audio' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl || exit 1
fi
# this checkout's package, always (a warm machine may hold an older build)
python3 -m pip install -q --no-index --no-deps --no-compile --force-reinstall .whl/llamafactory_kimi_audio-*.whl || exit 1
python3 benchmarks/common.py install-hooks /tmp/benchhooks || exit 1
export PYTHONPATH=/tmp/benchhooks

python3 - <<'EOF' || exit 1
import importlib.metadata as md, sys, torch
import llamafactory.train.tuner  # noqa: F401  (runs the start-up hooks)
from llamafactory_kimi_audio import _startup
names = ["torch", "transformers", "peft", "accelerate", "llamafactory", "trl", "datasets", "tokenizers",
         "deepspeed", "bitsandbytes", "llamafactory-kimi-audio"]
versions = {}
for name in names:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
print("python", sys.version.split()[0], versions, "cuda", torch.version.cuda, torch.cuda.device_count(), "GPUs")
print("hooks", _startup.applied_hooks(), "failed", _startup.failed_hooks())
assert not _startup.failed_hooks()
EOF

case "$PHASE" in
bench)
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; } > "$OUT/machine.txt"
  # PYTEST_ARGS: GPU-only tests first, alone on GPU 0 (e.g. "tests/models/test_packing.py -k cuda")
  # shellcheck disable=SC2086
  [ -z "${PYTEST_ARGS:-}" ] || CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -p no:cacheprovider $PYTEST_ARGS \
    > "$OUT/pytest.log" 2>&1
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/common.py setup --work "$BENCH_WORK" --samples 400 || exit 1
  (
    # QLORA=1: examples/kimi_qlora.yaml as shipped, on the random checkpoint saved in the official layout
    [ -z "${QLORA:-}" ] || CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_dist.py --cases qlora_recipe \
      --out "$OUT/qlora.jsonl" > "$OUT/qlora.log" 2>&1
    [ -n "${SKIP_PRECOMPUTE:-}" ] || CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_precompute.py --workers 8 \
      --out "$OUT/precompute.jsonl" > "$OUT/precompute.log" 2>&1
    [ -n "${SKIP_DIST_PREPARE:-}" ] || CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_dist.py --prepare-only \
      > "$OUT/dist_prepare.log" 2>&1
  ) &
  # TRAIN_ARGS: e.g. "--cases kimi_cached_mb32_group --profile kimi_cached_mb32_group" (profiles go to profiles.tgz)
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_train.py --budget "${TRAIN_BUDGET:-420}" --out "$OUT/train.jsonl" \
    --profile-dir /tmp/kimi_profiles ${TRAIN_ARGS:-} > "$OUT/train.log" 2>&1
  wait
  [ -d /tmp/kimi_profiles ] && tar czf "$OUT/profiles.tgz" -C /tmp kimi_profiles
  tail -30 "$OUT/train.log"; tail -12 "$OUT/pytest.log" 2>/dev/null; tail -12 "$OUT/precompute.log" "$OUT/dist_prepare.log" "$OUT/qlora.log" 2>/dev/null
  ;;
dist)
  # ZeRO offload swaps the Trainer's AdamW for DeepSpeedCPUAdam, which DeepSpeed JIT-compiles on first use (ninja +
  # the CUDA toolkit); build it now, beside the checkpoint preparation, and log how long it takes
  python3 -c 'import time; from deepspeed.ops.op_builder import CPUAdamBuilder; t = time.time(); CPUAdamBuilder().load(); print(f"cpu_adam ready in {time.time() - t:.0f}s")' \
    > "$OUT/cpu_adam.log" 2>&1 &
  # DIST_ARGS: e.g. "--cases lora_1gpu,full_z3_offload --steps 4 --warmup 1"
  # shellcheck disable=SC2086
  python3 benchmarks/bench_dist.py --budget "${DIST_BUDGET:-450}" --out "$OUT/dist.jsonl" --logs /tmp/kimi_bench/logs \
    ${DIST_ARGS:-} 2>&1 | tee "$OUT/dist.log"
  wait
  cat "$OUT/cpu_adam.log"
  tar czf "$OUT/dist_logs.tgz" -C /tmp/kimi_bench logs
  # the kernel tables and NCCL shares (the Chrome traces stay: they can pass the 16 MB a returned file may have)
  if [ -d /tmp/kimi_bench/profiles ]; then tar czf "$OUT/dist_profiles.tgz" --exclude="*.json.gz" -C /tmp/kimi_bench profiles; fi
  ;;
pscale)
  # issue 19: precompute of a PSCALE_HOURS corpus (default 10 h) by torchrun with 1, 2, 4, 8 ranks (up to the GPUs)
  RANKS=${PSCALE_RANKS:-$(python3 -c 'import torch; n = torch.cuda.device_count(); print(",".join(str(k) for k in (1, 2, 4, 8) if k <= n))')}
  python3 benchmarks/bench_precompute.py --device cuda --ranks "$RANKS" --hours "${PSCALE_HOURS:-10}" \
    --out "$OUT/pscale.jsonl" 2>&1 | tee "$OUT/pscale.log" | grep -v Warning
  ;;
scale)
  # issue 20: bench_scale on GPU 0 (precompute of SCALE_HOURS synthetic hours, full and codes-only; 8 loader ranks
  # × 4 workers reading the cache). 100 h does not fit one 10-minute device call: run it alone (SCALE_HOURS=100)
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_scale.py --device cuda --hours "${SCALE_HOURS:-1,10}" --ranks 8 \
    --workers 4 --out "$OUT/scale.jsonl" 2>&1 | tee "$OUT/scale.log" | grep -v Warning
  ;;
eval)
  # issue 21 item 5: the fast decoder's CUDA tests (graph vs transformers' loop), then evaluation speed on the
  # full-size random checkpoint (written once: run EVAL_ARGS=--prepare-only first if a call must stay short)
  export PYTHONPATH="$PWD:$PYTHONPATH"  # this checkout's package even if the wheel in .whl/ is older
  CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -p no:cacheprovider tests/eval/test_fast_eval.py -k cuda \
    > "$OUT/pytest_eval.log" 2>&1
  tail -5 "$OUT/pytest_eval.log"
  # EVAL_ARGS: e.g. "--batch-sizes 32,64 --decode auto"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_eval.py --out "$OUT/eval.jsonl" ${EVAL_ARGS:-} 2>&1 \
    | tee "$OUT/eval.log" | grep -v Warning
  ;;
esac

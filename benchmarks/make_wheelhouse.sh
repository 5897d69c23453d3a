#!/usr/bin/env bash
# The wheels the GPU image lacks (benchmarks/RESULTS.md, "Environment"), into .whl/ (ignored by git; carried with
# the device tool's `carry [".whl"]`, under its 64 MiB limit), then this checkout's own wheel. Run from the
# repository root on a machine where pip reaches an index:
#   bash benchmarks/make_wheelhouse.sh            # QLORA=1 also fetches bitsandbytes (re-zipped, CUDA 13 only)
# gpu_run.sh installs them with `pip install --no-index --no-deps` into the image's Python.
set -euo pipefail
PY=${PYTHON:-python3}
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# the versions of the earlier sessions' runs (RESULTS.md), plus soxr (resampling of non-16 kHz audio)
WHEELS=(llamafactory==0.9.5 transformers==5.6.0 tokenizers==0.22.2 peft==0.18.1 trl==0.24.0 datasets==4.0.0
        accelerate==1.11.0 dill==0.3.8 multiprocess==0.70.16 fsspec==2025.3.0 omegaconf==2.4.0 torchdata==0.11.0
        soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pydantic==2.12.3 pydantic-core==2.41.4 annotated-types
        typing-inspection hjson soxr
        torchao==0.17.0)  # fp8: true (issue 28): torchao 0.17 is the release built for torch 2.11, the GPU image's
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "${WHEELS[@]}"
# DeepSpeed ships only as an sdist: a pure-Python wheel (ZeRO-2/3 need no compiled op; CPU Adam for offload is
# JIT-built on the GPU machine, see gpu_run.sh dist)
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" deepspeed==0.19.8
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tmp"/deepspeed-*.tar.gz
  rm -rf "$tmp"
fi
if [ -n "${QLORA:-}" ] && ! ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$tmp" bitsandbytes==0.50.2
  (cd "$tmp" && mkdir x && cd x && unzip -q ../bitsandbytes-*.whl \
    && find . -name 'libbitsandbytes_*' ! -name '*cuda13*' ! -name '*cpu*' -delete \
    && "$PY" - <<'EOF'
import base64, csv, hashlib, pathlib
root = pathlib.Path(".")
record = next(root.glob("*.dist-info/RECORD"))
rows = []
for path in sorted(p for p in root.rglob("*") if p.is_file() and p != record):
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rows.append([path.as_posix(), f"sha256={digest}", str(len(data))])
rows.append([record.as_posix(), "", ""])
with record.open("w", newline="") as f:
    csv.writer(f).writerows(rows)
EOF
  ) && (cd "$tmp/x" && zip -qr "$OLDPWD/.whl/$(basename "$tmp"/bitsandbytes-*.whl)" .)
  rm -rf "$tmp"
fi
rm -f .whl/llamafactory_kimi_audio-*.whl
"$PY" -m pip wheel -q --no-deps -w .whl .  # build isolation: fetches the build backend (hatchling)
du -sh .whl

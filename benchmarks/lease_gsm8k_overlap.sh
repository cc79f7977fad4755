# Issue #36's next device job, in priority order (written 2026-12-07 after a lease was refused; ~25 device minutes
# on an H100 after staging; ~28 with the by-group overlap row). Run it through lease_bg.sh so its files come back as it goes:
#   source benchmarks/lease_setup.sh && bash benchmarks/lease_bg.sh start gsm8k 'bash benchmarks/lease_gsm8k_overlap.sh' \
#       && bash benchmarks/lease_bg.sh wait gsm8k 560          (then `wait gsm8k 580` calls back to back)
# 1. the streaming GPU twins (every SM and a green-context half; the engine on a highest-priority stream);
# 2. the 7B GSM8K-shape rows, two steps each, one process each, the same drawn lengths: NVFP4 trained under the
#    rollout by completion on half the SMs, plain NVFP4 (+ a profiled update: where its seconds go), bf16 LoRA;
# 3. the 7B recipe through `qerl fit`, one step, then a resume for one more (the resume has not run on a GPU);
# 4. training under the rollout by group, on half the SMs and on every SM (the engine first), then the contention
#    probe (GIL or SMs?).
# Predictions (docs/step-cost.md, "What training under the tail can reach"): on an H100 plain NVFP4 39-41 s, bf16
# 49-52 s; by group on half the SMs 35-38 s, by completion 33-37 s (if the decode keeps 80-90% beside the update).
cd "$(dirname "$0")/.." || exit 2
python3 -c "import torch, torch.cuda.green_contexts as g; print('torch', torch.__version__, 'green', g.SUPPORTED,
[a for a in dir(g.GreenContext) if not a.startswith('_')])" 2>&1
timeout 330 python3 -m pytest -q -m gpu tests/rollout/test_vllm_stream_gpu.py tests/rollout/test_vllm_stream.py \
  -p no:cacheprovider -rA -W default > "$OUT/stream-gpu.txt" 2>&1; tail -4 "$OUT/stream-gpu.txt"
row() {  # row TAG FORMAT FLAGS...: one two-step GSM8K-shape row in its own process
  tag=$1 format=$2; shift 2
  timeout 480 python3 benchmarks/step.py --rows "7b:$format:128:4096:2" --rollout vllm --lengths gsm8k --pack-groups \
    --vllm-no-compile --vllm-util auto --vllm-sleep auto --mismatch update --out "$OUT" --tag "gsm8k-$tag-2steps" "$@" \
    > "$OUT/row-$tag.log" 2>&1
  echo "row $tag exit $?"; grep -v INFO "$OUT/row-$tag.log" | grep -i -e "step_s" -e error -e Traceback | tail -3
}
row nvfp4-overlap-half-completion nvfp4 --train-during-rollout --train-sm-share 0.5 --train-unit completion
row nvfp4 nvfp4 --profile-train
row bf16 bf16
mkdir -p "$OUT/fit"
timeout 720 python3 benchmarks/fit_recipe.py recipes/qwen2.5-7b/grpo-nvfp4-gsm8k.yaml --shape qwen2.5-7b --steps 1 \
  --resume-steps 1 --prompts 64 --prompt-reader JsonlPrompts --root /tmp/fit7b --out "$OUT/fit" > "$OUT/fit.log" 2>&1
echo "fit exit $?"; tail -5 "$OUT/fit.log"
row nvfp4-overlap-half nvfp4 --train-during-rollout --train-sm-share 0.5
row nvfp4-overlap-prio nvfp4 --train-during-rollout
timeout 420 python3 benchmarks/probes/overlap_contention.py --out "$OUT" > "$OUT/probe.log" 2>&1
echo "probe exit $?"; grep -v INFO "$OUT/probe.log" | tail -14

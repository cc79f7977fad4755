# Issue #36's next device job, in priority order (rewritten 2026-12-08: the eighteenth lease's overlap rows ran with
# the engine asleep, so nothing trained under the rollout; the plan now keeps the engine awake and cuts its KV cache
# instead). ~26 device minutes on an H100 after staging; the items come back as they finish. Run it through
# lease_bg.sh so its files come back:
#   source benchmarks/lease_setup.sh && bash benchmarks/lease_bg.sh start gsm8k 'bash benchmarks/lease_gsm8k_overlap.sh' \
#       && bash benchmarks/lease_bg.sh wait gsm8k 560          (then `wait gsm8k 580` calls back to back)
# 1. the 7B GSM8K-shape rows, two steps each, one process each, the same drawn lengths as the committed H100 rows
#    (bf16 51.22 s, NVFP4 42.14 s): NVFP4 trained under the rollout by completion on half the SMs, then bf16 LoRA
#    (the ratio's baseline in the same lease);
# 2. the whole GPU suite (it holds the streaming GPU twins, the by-completion one fixed since 2026-12-07);
# 3. by completion on every SM (the engine first), plain NVFP4, by group on half the SMs;
# 4. the contention probe (how much of the decode survives beside the update: the model's `keep` and `share`);
# 5. bf16 with a profiled update: NVFP4's update is ~1.1 s slower than bf16's on both cards (15.30 / 14.15 s on the
#    H100, 14.10 / 12.96 s on the H200) and its profile (committed) shows no 4-bit cost that large (dequantize 0.3 s,
#    dgrad 0.1 s); bf16's profile beside it says which kernel family holds the difference.
# Predictions (overlap_model.py on the H100 two-step rows): by completion on half the SMs 34-37 s (1.39-1.49x at
# keep 0.8-0.9, share 0.45); bf16 49-52 s; plain NVFP4 41-43 s; by group on half 36-38 s; every SM: time-slicing, ~42 s.
cd "$(dirname "$0")/.." || exit 2
row() {  # row TAG FORMAT FLAGS...: one two-step GSM8K-shape row in its own process
  tag=$1 format=$2; shift 2
  timeout 480 python3 benchmarks/step.py --rows "7b:$format:128:4096:2" --rollout vllm --lengths gsm8k --pack-groups \
    --vllm-no-compile --vllm-util auto --vllm-sleep auto --mismatch update --out "$OUT" --tag "gsm8k-$tag-2steps" "$@" \
    > "$OUT/row-$tag.log" 2>&1
  echo "row $tag exit $?"; grep -v INFO "$OUT/row-$tag.log" | grep -i -e "step_s" -e "KV cache cut" -e error \
    -e Traceback | tail -3
}
row nvfp4-overlap-half-completion nvfp4 --train-during-rollout --train-sm-share 0.5 --train-unit completion
row bf16 bf16
timeout 600 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rf > "$OUT/gpu-suite.txt" 2>&1; tail -3 "$OUT/gpu-suite.txt"
row nvfp4-overlap-completion nvfp4 --train-during-rollout --train-unit completion
row nvfp4-plain nvfp4
row nvfp4-overlap-half nvfp4 --train-during-rollout --train-sm-share 0.5
timeout 420 python3 benchmarks/probes/overlap_contention.py --out "$OUT" > "$OUT/probe.log" 2>&1
echo "probe exit $?"; grep -v INFO "$OUT/probe.log" | tail -14
row bf16-profiled bf16 --profile-train

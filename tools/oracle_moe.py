#!/usr/bin/env python3
"""oracle_moe.py — reference logits from Hugging Face `transformers` for the MoE architectures.

Developer tool (CI never runs it; it needs torch + transformers + safetensors):

    /work/venv-oracle/bin/python tools/oracle_moe.py            # all configs
    /work/venv-oracle/bin/python tools/oracle_moe.py ds_q_yarn   # one config by name

Writes tests/data/oracle/moe/<name>/{config.json, model.safetensors, ref.json, ref.bin}: tiny random
checkpoints (fp32, seeded) of qwen3_moe, mixtral and deepseek_v3 covering: per-head q/k norm, GQA / MQA,
softmax top-k with and without norm_topk_prob, decoder_sparse_step and mlp_only_layers (dense layers in
between), mixtral top-2; DeepSeek MLA with q_lora_rank set and null, odd head dims, YaRN rope with mscale
attention scaling, first_k_dense_replace, 1 or 2 shared experts, sigmoid scoring with a (random)
e_score_correction_bias, n_group > 1 group-limited selection, norm_topk_prob on/off, routed_scaling_factor;
and MTP (num_nextn_predict_layers) weights appended to the checkpoint (transformers ignores them; the C
loader must recognize and load them). Norm weights are set away from 1 so a misapplied norm shows.

ref.json / ref.bin have the layout of tools/oracle.py's tiny fixtures: per case the full token sequence
(prompt + greedy continuation computed with full re-forwards, no cache) and the offset into ref.bin
(little-endian float32) of the logits at every position, shape (len(tokens), vocab). Greedy continuations
have a top-1/top-2 margin large enough that fp32 rounding cannot flip them, and the router decisions are
checked to have a margin too (a near tie in top-k selection could flip under fp32 reordering).
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "oracle", "moe")
VOCAB = 300
N_DECODE = 6
PROMPT_LENS = [7, 37]

CONFIGS = [
    dict(name="qwen3moe_gqa_sparse", arch="qwen3_moe", hidden_size=64, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, intermediate_size=80, moe_intermediate_size=32,
         num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
         decoder_sparse_step=1, mlp_only_layers=[1], rope_theta=1000000.0),
    dict(name="qwen3moe_mqa_step2_nonorm", arch="qwen3_moe", hidden_size=72, num_attention_heads=6,
         num_key_value_heads=1, head_dim=12, intermediate_size=88, moe_intermediate_size=20,
         num_hidden_layers=4, num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
         decoder_sparse_step=2, mlp_only_layers=[], rope_theta=10000.0),
    dict(name="mixtral_top2", arch="mixtral", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
         head_dim=16, intermediate_size=56, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
         rope_theta=1000000.0),
    dict(name="ds_qlora_yarn_groups", arch="deepseek_v3", hidden_size=64, num_attention_heads=4,
         q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
         intermediate_size=72, moe_intermediate_size=20, num_hidden_layers=3, first_k_dense_replace=1,
         n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3, n_shared_experts=1,
         norm_topk_prob=True, routed_scaling_factor=2.5, rope_theta=10000.0,
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0,
               "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
         mtp=1),
    dict(name="ds_noqlora_odd", arch="deepseek_v3", hidden_size=56, num_attention_heads=3,
         q_lora_rank=None, kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=8,
         intermediate_size=40, moe_intermediate_size=12, num_hidden_layers=2, first_k_dense_replace=0,
         n_routed_experts=5, n_group=1, topk_group=1, num_experts_per_tok=2, n_shared_experts=2,
         norm_topk_prob=False, routed_scaling_factor=1.0, rope_theta=10000.0, rope=None, mtp=0),
    dict(name="ds_noqlora_yarn_g2", arch="deepseek_v3", hidden_size=48, num_attention_heads=2,
         q_lora_rank=None, kv_lora_rank=20, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=8,
         intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, first_k_dense_replace=2,
         n_routed_experts=6, n_group=2, topk_group=1, num_experts_per_tok=2, n_shared_experts=1,
         norm_topk_prob=True, routed_scaling_factor=1.5, rope_theta=50000.0,
         rope={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 32.0,
               "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707},
         mtp=1),
    dict(name="qwen3moe_all_moe", arch="qwen3_moe", hidden_size=64, num_attention_heads=8,
         num_key_value_heads=2, head_dim=8, intermediate_size=64, moe_intermediate_size=32,
         num_hidden_layers=2, num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
         decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0),
]


def versions():
    import transformers
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def make_model(cfg, seed):
    import transformers as T
    rope_params = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg.get("rope"):
        rope_params = dict(cfg["rope"], rope_theta=cfg["rope_theta"])
    common = dict(vocab_size=VOCAB, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                  num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                  max_position_embeddings=256, rms_norm_eps=1e-6, rope_parameters=rope_params,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.08,
                  attn_implementation="eager", dtype=torch.float32)
    a = cfg["arch"]
    if a == "qwen3_moe":
        conf = T.Qwen3MoeConfig(**common, num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                                moe_intermediate_size=cfg["moe_intermediate_size"], num_experts=cfg["num_experts"],
                                num_experts_per_tok=cfg["num_experts_per_tok"], norm_topk_prob=cfg["norm_topk_prob"],
                                decoder_sparse_step=cfg["decoder_sparse_step"],
                                mlp_only_layers=cfg["mlp_only_layers"], attention_bias=False)
        cls = T.Qwen3MoeForCausalLM
    elif a == "mixtral":
        conf = T.MixtralConfig(**common, num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                               num_local_experts=cfg["num_local_experts"],
                               num_experts_per_tok=cfg["num_experts_per_tok"])
        cls = T.MixtralForCausalLM
    else:
        conf = T.DeepseekV3Config(**common, num_key_value_heads=cfg["num_attention_heads"],
                                  q_lora_rank=cfg["q_lora_rank"], kv_lora_rank=cfg["kv_lora_rank"],
                                  qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"],
                                  v_head_dim=cfg["v_head_dim"], moe_intermediate_size=cfg["moe_intermediate_size"],
                                  first_k_dense_replace=cfg["first_k_dense_replace"],
                                  n_routed_experts=cfg["n_routed_experts"], n_group=cfg["n_group"],
                                  topk_group=cfg["topk_group"], num_experts_per_tok=cfg["num_experts_per_tok"],
                                  n_shared_experts=cfg["n_shared_experts"], norm_topk_prob=cfg["norm_topk_prob"],
                                  routed_scaling_factor=cfg["routed_scaling_factor"], attention_bias=False)
        cls = T.DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    model = cls(conf).eval().float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() >= 2:  # some MoE inits leave experts/routers at zero or unscaled
                p.copy_(0.08 * torch.randn_like(p))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model


def greedy_full(model, prompt, n_steps):
    toks = list(prompt)
    margins = []
    with torch.no_grad():
        for _ in range(n_steps):
            logits = model(torch.tensor([toks])).logits[0, -1].double()
            top2 = torch.topk(logits, 2)
            margins.append(float((top2.values[0] - top2.values[1]) / logits.abs().max()))
            toks.append(int(top2.indices[0]))
        full = model(torch.tensor([toks])).logits[0].float().numpy()
    return toks, full, min(margins)


class RouterMargin:
    """Records the smallest gap between the k-th and (k+1)-th selection score of every router call."""

    def __init__(self, model, arch):
        self.min = float("inf")
        self.hooks = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopkRouter") or type(mod).__name__.endswith("TopKRouter"):
                self.hooks.append(mod.register_forward_hook(self.hook))

    def hook(self, mod, inp, out):
        x = inp[0].reshape(-1, mod.weight.shape[1]).float()
        logits = x @ mod.weight.float().t()
        k = mod.top_k
        if hasattr(mod, "e_score_correction_bias"):
            s = logits.sigmoid() + mod.e_score_correction_bias
            ng = mod.num_group
            g = s.view(s.shape[0], ng, -1).topk(2, dim=-1)[0].sum(-1)
            if mod.topk_group < ng:
                gs = g.sort(dim=-1, descending=True)[0]
                self.min = min(self.min, float((gs[:, mod.topk_group - 1] - gs[:, mod.topk_group]).min()))
            gi = g.topk(mod.topk_group, dim=-1)[1]
            mask = torch.zeros_like(g).scatter_(1, gi, 1).bool()
            mask = mask.unsqueeze(-1).expand(-1, ng, s.shape[1] // ng).reshape(s.shape)
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = logits.softmax(-1)
        ss = s.sort(dim=-1, descending=True)[0]
        if k < ss.shape[1]:
            gap = ss[:, k - 1] - ss[:, k]
            gap = gap[torch.isfinite(gap)]
            if gap.numel():
                self.min = min(self.min, float(gap.min()))

    def close(self):
        for h in self.hooks:
            h.remove()


def add_mtp(d, model, cfg, seed):
    """Append MTP layer weights (DeepSeek-V3 naming, layer index n_layers..) to model.safetensors."""
    from safetensors.torch import load_file, save_file
    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    g = torch.Generator().manual_seed(seed)
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    src = L - 1  # copy the shapes of the last (MoE) decoder layer
    for m in range(cfg["mtp"]):
        li = L + m
        for k in list(sd.keys()):
            pre = f"model.layers.{src}."
            if k.startswith(pre):
                sd[f"model.layers.{li}." + k[len(pre):]] = 0.08 * torch.randn(sd[k].shape, generator=g)
        sd[f"model.layers.{li}.enorm.weight"] = 1 + 0.3 * torch.randn(H, generator=g)
        sd[f"model.layers.{li}.hnorm.weight"] = 1 + 0.3 * torch.randn(H, generator=g)
        sd[f"model.layers.{li}.eh_proj.weight"] = 0.08 * torch.randn(H, 2 * H, generator=g)
        sd[f"model.layers.{li}.shared_head.norm.weight"] = 1 + 0.3 * torch.randn(H, generator=g)
        sd[f"model.layers.{li}.shared_head.head.weight"] = 0.08 * torch.randn(VOCAB, H, generator=g)
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"format": "pt"})
    cp = os.path.join(d, "config.json")
    j = json.load(open(cp))
    j["num_nextn_predict_layers"] = cfg["mtp"]
    json.dump(j, open(cp, "w"), indent=2)


def do_one(ci, cfg):
    d = os.path.join(OUT, cfg["name"])
    os.makedirs(d, exist_ok=True)
    for attempt in range(20):
        model = make_model(cfg, 3000 + 97 * ci + attempt)
        rng = np.random.default_rng(4000 + ci + 1000 * attempt)
        cases, blobs, off, ok = [], [], 0, True
        rm = RouterMargin(model, cfg["arch"])
        for plen in PROMPT_LENS:
            for _ in range(30):
                rm.min = float("inf")
                prompt = [int(t) for t in rng.integers(3, VOCAB, size=plen)]
                toks, full, margin = greedy_full(model, prompt, N_DECODE)
                if margin > 2e-3 and rm.min > 2e-5:
                    break
            else:
                ok = False
                break
            cases.append({"n_prompt": plen, "tokens": toks, "logits_offset": off, "min_greedy_margin": margin,
                          "min_router_margin": rm.min})
            blobs.append(full.astype("<f4").ravel())
            off += full.size
        rm.close()
        if ok:
            break
    else:
        raise SystemExit(f"{cfg['name']}: no seed with safe greedy and router margins")
    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(d):
        if f == "generation_config.json":
            os.remove(os.path.join(d, f))
    if cfg.get("mtp"):
        add_mtp(d, model, cfg, 5000 + ci)
    with open(os.path.join(d, "ref.bin"), "wb") as f:
        for b in blobs:
            f.write(b.tobytes())
    ref = {"versions": versions(), "n_vocab": VOCAB, "config": cfg, "cases": cases}
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)
    scale = max(float(np.abs(b).max()) for b in blobs)
    print(f"{cfg['name']}: {sum(p.numel() for p in model.parameters())} params, max|logit| {scale:.3f}, "
          f"greedy margins {[round(c['min_greedy_margin'], 4) for c in cases]}, "
          f"router margins {[float('%.3g' % c['min_router_margin']) for c in cases]}")


def main():
    names = sys.argv[1:]
    for ci, cfg in enumerate(CONFIGS):
        if names and cfg["name"] not in names:
            continue
        do_one(ci, cfg)


if __name__ == "__main__":
    main()

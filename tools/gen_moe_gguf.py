#!/usr/bin/env python3
"""gen_moe_gguf.py — GGUF files of the MoE oracle fixtures as llama.cpp's convert_hf_to_gguf.py writes them,
made with the `gguf` package's GGUFWriter and tensor-name map (not the project's writer), for test_moe.c.

Developer tool (CI never runs it; it needs `pip install gguf numpy`):

    /tmp/venv-gguf/bin/python tools/gen_moe_gguf.py

Reads tests/data/oracle/moe/<name>/{config.json, model.safetensors} (the transformers checkpoints of
tools/oracle_moe.py, whose ref.json / ref.bin hold transformers' logits) and writes
tests/data/oracle/moe_gguf/<name>.<outtype>.gguf, following the converter (TextModel, Qwen2MoeModel /
Qwen3MoeModel, DeepseekV2Model, as of the 2026 sources):

  * keys: {arch}.block_count, context_length, embedding_length, feed_forward_length, attention.head_count,
    head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon, expert_count, expert_used_count,
    expert_group_count, expert_group_used_count, expert_gating_func (from scoring_func),
    attention.key_length / value_length (from head_dim), rope.scaling.* from rope_parameters (yarn:
    type, factor, original_context_length, yarn_beta_fast, yarn_beta_slow), general.file_type;
    qwen3moe: expert_feed_forward_length; deepseek2: head_count_kv = 1 (MLA served as MQA),
    leading_dense_block_count, vocab_size, attention.q_lora_rank (when set), kv_lora_rank, key_length =
    kv_lora + rope and value_length = kv_lora (the latent cache), key_length_mla = nope + rope,
    value_length_mla = v_head_dim, expert_feed_forward_length, expert_shared_count, expert_weights_scale,
    expert_weights_norm (written only when norm_topk_prob is true), rope.dimension_count,
    rope.scaling.yarn_log_multiplier = 0.1 * mscale_all_dim.
  * tensors: names through gguf.get_tensor_name_map (blk.N.attn_q_a, attn_kv_a_mqa, ffn_gate_inp,
    exp_probs_b.bias, ffn_{gate,up,down}_exps, *_shexp, ...); experts stacked into 3-D tensors; deepseek2's
    kv_b_proj split per head into attn_k_b (transposed) and attn_v_b; MTP layers skipped.
  * types as the converter's --outtype: f32 everything; f16 / q8_0: 1-D tensors, *_norm.weight,
    ffn_gate_inp and non-.weight tensors stay f32, the rest is converted with gguf.quants.quantize and a
    row that is not a whole number of Q8_0 blocks falls back to f16, as the converter does.

Differences from a real conversion, both because the fixtures are transformers' save_pretrained output:
no tokenizer (the fixtures have none; the C test feeds token ids), and scoring_func is set to "sigmoid" for
DeepseekV3 because transformers' DeepseekV3Config does not store the key that DeepSeek-V3's released
config.json carries (the converter turns it into expert_gating_func = 2).
"""
import json
from importlib.metadata import version
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "data", "oracle", "moe")
OUT = os.path.join(ROOT, "tests", "data", "oracle", "moe_gguf")

# (fixture, outtype): small enough to commit (a few hundred KB each)
JOBS = [("ds_noqlora_odd", "f32"), ("ds_qlora_yarn_groups", "f16"), ("qwen3moe_all_moe", "q8_0")]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"]).copy()
    return out


def convert(name, outtype):
    d = os.path.join(SRC, name)
    hp = json.load(open(os.path.join(d, "config.json")))
    sd = read_safetensors(os.path.join(d, "model.safetensors"))
    hf_arch = hp["architectures"][0]
    ds = hf_arch == "DeepseekV3ForCausalLM"
    assert ds or hf_arch == "Qwen3MoeForCausalLM", hf_arch
    arch = gguf.MODEL_ARCH.DEEPSEEK2 if ds else gguf.MODEL_ARCH.QWEN3MOE
    n_layer = hp["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    path = os.path.join(OUT, f"{name}.{outtype}.gguf")
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)

    # ---- tensors (modify_tensors) ----
    tensors = []
    n_exp = next(hp[k] for k in ("num_local_experts", "num_experts", "n_routed_experts") if hp.get(k) is not None)
    for l in range(n_layer):
        for kind in ("down_proj", "gate_proj", "up_proj"):
            keys = [f"model.layers.{l}.mlp.experts.{x}.{kind}.weight" for x in range(n_exp)]
            if all(k in sd for k in keys):
                sd[f"model.layers.{l}.mlp.experts.{kind}.weight"] = np.stack([sd.pop(k) for k in keys])
    for hf_name in list(sd):
        data = sd[hf_name]
        if hf_name.startswith("model.layers.") and int(hf_name.split(".")[2]) >= n_layer:
            continue  # MTP layers (DeepseekV2Model skips them)
        if hf_name.endswith("e_score_correction_bias"):
            hf_name = hf_name.replace("e_score_correction_bias", "e_score_correction.bias")
        if ds and hf_name.endswith("kv_b_proj.weight"):
            H, nope, vd = hp["num_key_value_heads"], hp["qk_nope_head_dim"], hp["v_head_dim"]
            kv_b = data.reshape(H, nope + vd, data.shape[-1])
            k_b, v_b = kv_b[:, :nope, :], kv_b[:, nope:, :]
            tensors.append((hf_name.replace("kv_b_proj", "k_b_proj"), np.ascontiguousarray(k_b.transpose(0, 2, 1))))
            tensors.append((hf_name.replace("kv_b_proj", "v_b_proj"), np.ascontiguousarray(v_b)))
            continue
        tensors.append((hf_name, data))
    for hf_name, data in tensors:
        new = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert new is not None, f"no GGUF name for {hf_name}"
        qt = None
        if data.ndim <= 1 or new.endswith("_norm.weight") or ".ffn_gate_inp." in new or not new.endswith(".weight"):
            qt = QT.F32
        elif outtype == "f32":
            qt = QT.F32
        elif outtype == "f16":
            qt = QT.F16
        else:
            qt = QT.Q8_0
        try:
            q = gguf.quants.quantize(data, qt)
        except gguf.QuantError:  # the converter's fallback
            qt = QT.F16
            q = gguf.quants.quantize(data, qt)
        w.add_tensor(new, q, raw_dtype=None if qt in (QT.F32, QT.F16) else qt)

    # ---- keys (set_gguf_parameters) ----
    if ds:
        hp.setdefault("scoring_func", "sigmoid")  # see the module docstring
        hp["num_key_value_heads"] = 1
    rp = hp.get("rope_parameters") or {}
    w.add_block_count(n_layer)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    if rp.get("rope_type") == "yarn" and rp.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if rp.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
        if rp.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    w.add_rope_freq_base(rp.get("rope_theta", hp.get("rope_theta")))
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(hp["num_experts_per_tok"])
    if hp.get("n_group") is not None:
        w.add_expert_group_count(hp["n_group"])
    if hp.get("topk_group") is not None:
        w.add_expert_group_used_count(hp["topk_group"])
    if hp.get("scoring_func") == "sigmoid":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    if hp.get("head_dim") is not None:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_file_type(ftype)
    if not ds:
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
    else:
        kv_lora, rope = hp["kv_lora_rank"], hp["qk_rope_head_dim"]
        w.add_leading_dense_block_count(hp["first_k_dense_replace"])
        w.add_vocab_size(hp["vocab_size"])
        if hp.get("q_lora_rank") is not None:
            w.add_q_lora_rank(hp["q_lora_rank"])
        w.add_kv_lora_rank(kv_lora)
        w.add_key_length(kv_lora + rope)  # overwrites head_dim's, as in the converter
        w.add_value_length(kv_lora)
        w.add_key_length_mla(hp["qk_nope_head_dim"] + rope)
        w.add_value_length_mla(hp["v_head_dim"])
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        w.add_expert_shared_count(hp.get("n_shared_experts", 0))
        if hp.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(hp["routed_scaling_factor"])
        if hp.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_rope_dimension_count(rope)
        if rp.get("mscale_all_dim") is not None:
            w.add_rope_scaling_yarn_log_mul(0.1 * rp["mscale_all_dim"])
    w.add_string("xds.fixture.generator", f"tools/gen_moe_gguf.py (gguf {version('gguf')})")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path}: {os.path.getsize(path)} bytes, {len(tensors)} tensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    names = sys.argv[1:]
    for name, outtype in JOBS:
        if not names or name in names:
            convert(name, outtype)


if __name__ == "__main__":
    main()

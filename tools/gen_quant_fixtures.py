#!/usr/bin/env python3
"""gen_quant_fixtures.py — reference blocks of every weight type the GGUF loader accepts, made by the
`gguf` Python package (llama.cpp's own reader/writer and numpy (de)quantizers), for tests/unit/test_quant_ref.c.

Developer tool (CI never runs it; it needs `pip install gguf numpy`):

    python3 -m venv /tmp/venv-gguf && /tmp/venv-gguf/bin/pip install gguf numpy
    /tmp/venv-gguf/bin/python tools/gen_quant_fixtures.py

Writes tests/data/quant/ref.gguf with gguf.GGUFWriter. Every case <c> is a set of tensors:

  c.raw   the case's blocks, stored with their ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)
  c.deq   F32: gguf.quants.dequantize(c.raw) — what every element must dequantize to
  c.src   F32 (quantizer cases only): the floats that gguf.quants.quantize turned into c.raw, so the
          project's quantizer must give c.raw's bytes back from them

Where the blocks come from:
  * F16, BF16, Q8_0, Q4_0, Q4_1: gguf.quants.quantize of seeded random rows (mixed magnitudes, an all-zero
    block, a constant block, negative-dominant blocks, values on rounding ties); F16 through numpy's
    IEEE conversion, which is what gguf's quantize does for F16. Plus random raw bytes (every nibble /
    int8 pattern, negative, subnormal and large scales) that only gguf's dequantizer interprets.
  * Q4_K, Q6_K: gguf has dequantizers but no quantizers for them, so blocks are packed here from the
    documented ggml layout (block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins packed as in
    ggml's quantize_row_q4_K_ref, 128 bytes of nibbles; block_q6_K: 128 ql, 64 qh, 16 int8 scales, f16 d),
    and the packed scales are checked to unpack, through gguf's own Q4_K.get_scale_min, to the chosen
    values. Every Q4_K block has 8 distinct sub-block scales and 8 distinct mins, and sub-blocks 4-7 use
    values >= 16 (and some >= 32) so both high-bit paths of the packed 6-bit fields are exercised.
    Fully random 144 / 210-byte blocks (finite d) are added as well.

gguf's dequantizers compute in float32 with the operation order of ggml's reference C code
(e.g. Q4_K: (d*sc)*q - dmin*m; Q6_K: (d*sc)*q), so the C test requires bit-identical floats.
"""
import os
from importlib.metadata import version

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "quant", "ref.gguf")
QK_K = 256

rng = np.random.default_rng(20261207)


def f16_bits(x):
    return np.asarray(x, dtype=np.float16).reshape(-1).view(np.uint16)


def finite_f16(n, lo_exp=-24, hi_exp=4):
    """Random finite f16 scales of either sign, spread over magnitudes (including subnormals)."""
    mag = 2.0 ** rng.uniform(lo_exp, hi_exp, size=n)
    sgn = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    v = (mag * sgn).astype(np.float16)
    assert np.all(np.isfinite(v))
    return v


def test_rows(n_blocks, bs):
    """Rows of floats, block by block of different character."""
    rows = []
    for b in range(n_blocks):
        kind = b % 6
        if kind == 0:
            x = rng.standard_normal(bs) * 10.0 ** rng.uniform(-4, 2)
        elif kind == 1:
            x = np.zeros(bs)
        elif kind == 2:
            x = np.full(bs, rng.uniform(-3, 3))
        elif kind == 3:  # one large negative value dominates (Q4_0 picks the signed max)
            x = rng.uniform(-1, 1, bs)
            x[rng.integers(bs)] = -8.0
        elif kind == 4:  # values on the quantization grid's half-steps
            x = (rng.integers(-16, 16, bs) + 0.5) / 4.0
        else:
            x = rng.uniform(0, 1, bs) ** 3 * 1e3
        rows.append(x)
    return np.concatenate(rows).astype(np.float32)


cases = []  # (name, ggml type, raw bytes or element array, src floats or None)


def add_quant_case(name, qt, src):
    raw = quants.quantize(src, qt)
    cases.append((name, qt, raw, src))


def add_raw_case(name, qt, raw):
    cases.append((name, qt, np.ascontiguousarray(raw, dtype=np.uint8), None))


# ---- float types -----------------------------------------------------------------------------------
specials = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e6, -1e6, 6.1035156e-05, 6.0975552e-05,
                     5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 8.940697e-08, 1e-10, np.inf, -np.inf,
                     3.0e38, -1.17549435e-38, 1.0009765625, 1.00048828125, 1.00146484375, 2049.0, 2051.0],
                    dtype=np.float32)
# f32 values exactly halfway between two bf16 values (round to nearest even) and just off the tie
ties = np.array([0x3f808000, 0x3f818000, 0x3f808001, 0x3f817fff, 0xbf808000, 0x7f7f8000, 0x00018000,
                 0x00008000], dtype=np.uint32).view(np.float32)
fsrc = np.concatenate([specials, ties, rng.standard_normal(200).astype(np.float32) * 10.0 ** rng.uniform(-9, 5, 200)]).astype(np.float32)
cases.append(("f32", T.F32, fsrc.copy(), None))
with np.errstate(over="ignore"):  # values past 65504 round to inf, as IEEE says
    cases.append(("f16_quant", T.F16, fsrc.astype(np.float16), fsrc))
add_quant_case("bf16_quant", T.BF16, fsrc)

# every sign/exponent with the lowest and highest 16 mantissas, plus random patterns (NaNs included)
pats = [(s << 15) | (e << 10) | m for s in (0, 1) for e in range(32) for m in list(range(16)) + list(range(1008, 1024))]
pats = np.array(pats + list(rng.integers(0, 65536, 1024)), dtype=np.uint16)
cases.append(("f16_bits", T.F16, pats.view(np.float16), None))
add_raw_case("bf16_bits", T.BF16, np.concatenate([pats, rng.integers(0, 65536, 1024).astype(np.uint16)]).view(np.uint8))

# ---- 32-value block types --------------------------------------------------------------------------
for qt, name in ((T.Q8_0, "q8_0"), (T.Q4_0, "q4_0"), (T.Q4_1, "q4_1")):
    add_quant_case(name + "_quant", qt, test_rows(24, 32))
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    nb = 16
    raw = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    raw[:, 0:2] = finite_f16(nb).view(np.uint8).reshape(nb, 2)
    if qt == T.Q4_1:
        raw[:, 2:4] = finite_f16(nb).view(np.uint8).reshape(nb, 2)
    raw[0, 2 if qt != T.Q4_1 else 4:] = np.arange(ts - (2 if qt != T.Q4_1 else 4), dtype=np.uint8) * 17  # sweep
    add_raw_case(name + "_bytes", qt, raw.reshape(-1))


# ---- Q4_K: packed from the ggml layout -------------------------------------------------------------
def pack_q4k_scales(sc, mn):
    """ggml quantize_row_q4_K_ref's packing of 8 6-bit scales and mins into 12 bytes."""
    s = np.zeros(12, dtype=np.uint8)
    for j in range(8):
        ls, lm = int(sc[j]), int(mn[j])
        assert 0 <= ls < 64 and 0 <= lm < 64
        if j < 4:
            s[j] = ls
            s[j + 4] = lm
        else:
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            s[j - 4] |= (ls >> 4) << 6
            s[j] |= (lm >> 4) << 6
    return s


def q4k_block(sc, mn, d, dmin, qs):
    b = np.zeros(144, dtype=np.uint8)
    b[0:2] = f16_bits(d).view(np.uint8)
    b[2:4] = f16_bits(dmin).view(np.uint8)
    b[4:16] = pack_q4k_scales(sc, mn)
    b[16:] = qs
    got_sc, got_mn = quants.Q4_K.get_scale_min(b[4:16].reshape(1, 12).copy())
    assert list(got_sc[0]) == list(sc) and list(got_mn[0]) == list(mn), (sc, mn, got_sc, got_mn)
    return b


blocks = []
for i in range(12):
    # distinct scales and mins; sub-blocks 4-7 drawn from [16, 64) so their high 2 bits are non-zero
    def eight(fixed_hi, lo_below16):
        hi = np.array(fixed_hi) if fixed_hi is not None else 16 + rng.permutation(48)[:4]
        pool = [v for v in range(16 if lo_below16 else 64) if v not in set(hi)]
        return np.concatenate([rng.permutation(pool)[:4], hi])
    sc = eight([63, 48, 33, 17] if i == 0 else None, i % 3 == 0)  # i == 0: every combination of high bits
    mn = eight([17, 33, 48, 63] if i == 1 else None, i % 3 == 1)
    assert len(set(sc)) == 8 and len(set(mn)) == 8
    d, dmin = finite_f16(2, -14, 0)
    if i == 2:
        dmin = np.float16(0.0)  # no offset: scale path alone
    if i == 3:
        d = np.float16(0.0)  # only the mins
    qs = rng.integers(0, 256, 128, dtype=np.uint8)
    if i == 4:
        qs[:] = 0xF0  # low nibbles 0, high 15: sub-blocks alternate
    blocks.append(q4k_block(sc, mn, d, dmin, qs))
add_raw_case("q4_k_packed", T.Q4_K, np.concatenate(blocks))
raw = rng.integers(0, 256, (8, 144), dtype=np.uint8)
raw[:, 0:4] = finite_f16(16).view(np.uint8).reshape(8, 4)
add_raw_case("q4_k_bytes", T.Q4_K, raw.reshape(-1))

# ---- Q6_K: packed from the ggml layout -------------------------------------------------------------
blocks = []
for i in range(8):
    b = np.zeros(210, dtype=np.uint8)
    b[0:128] = rng.integers(0, 256, 128, dtype=np.uint8)   # ql: low 4 bits
    b[128:192] = rng.integers(0, 256, 64, dtype=np.uint8)  # qh: high 2 bits
    sc = rng.permutation(np.arange(-128, 128))[:16].astype(np.int8)  # 16 distinct int8 scales
    if i == 0:
        sc = np.array([-128, 127, -1, 1, 0, 64, -64, 2, -2, 100, -100, 31, -31, 15, -15, 7], dtype=np.int8)
    b[192:208] = sc.view(np.uint8)
    b[208:210] = f16_bits(finite_f16(1, -20, 2)[0]).view(np.uint8)
    if i == 1:
        b[0:192] = 0xFF  # q = 63 - 32 everywhere
    blocks.append(b)
add_raw_case("q6_k_packed", T.Q6_K, np.concatenate(blocks))
raw = rng.integers(0, 256, (6, 210), dtype=np.uint8)
raw[:, 208:210] = finite_f16(6).view(np.uint8).reshape(6, 2)
add_raw_case("q6_k_bytes", T.Q6_K, raw.reshape(-1))

# ---- write -------------------------------------------------------------------------------------------
os.makedirs(os.path.dirname(OUT), exist_ok=True)
w = gguf.GGUFWriter(OUT, "xds-quant-ref")
w.add_string("xds.quant_ref.generator", "tools/gen_quant_fixtures.py with gguf " + version("gguf") + ", numpy " + np.__version__)
w.add_array("xds.quant_ref.cases", [c[0] for c in cases])
for name, qt, raw, src in cases:
    if qt in (T.F32, T.F16):
        arr = np.asarray(raw)
        w.add_tensor(name + ".raw", arr, raw_dtype=qt)
        deq = arr.astype(np.float32)
    else:
        w.add_tensor(name + ".raw", raw, raw_dtype=qt)  # uint8 bytes: the writer derives the element shape
        deq = quants.dequantize(raw, qt).astype(np.float32).reshape(-1)
    w.add_tensor(name + ".deq", deq)
    if src is not None:
        w.add_tensor(name + ".src", np.asarray(src, dtype=np.float32))
    print(f"{name:14s} {qt.name:5s} {deq.size:6d} values")
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(OUT, os.path.getsize(OUT), "bytes")

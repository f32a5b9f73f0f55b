#!/usr/bin/env python3
"""Reference fixtures for the tokenizer and chat-template tests.

Run by developers (not CI) with the oracle venv:
    /work/venv-oracle/bin/python tools/gen_tokenizer_fixtures.py [--model SmolLM2.gguf]
Writes tests/data/tokenizer/{ids_smollm2,ids_qwen3,ids_deepseek_v3}.json (test
strings and the ids Hugging Face `tokenizers` gives them) and
tests/data/tokenizer/chat.json (conversations and the prompts transformers'
apply_chat_template renders for each family) and variants.json (small trained
tokenizers covering pre-tokenizer / added-token options, with reference ids).

Reference tokenizers
- Qwen3 and DeepSeek-V3: `tokenizers.Tokenizer.from_file` on the real
  tokenizer.json in ../shared/tokenizers (the C test loads the same files).
- SmolLM2: the tokenizer comes from the GGUF (tokenizer.ggml.tokens / merges /
  token_type, pre = "smollm"). transformers' GGUF loader rebuilds it with a
  plain ByteLevel pre-tokenizer (GPT-2 regex), which is NOT what the released
  HF SmolLM2 tokenizer does: its tokenizer.json pre-tokenizer is
  Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)],
  i.e. every digit is split off on its own before the GPT-2 regex. That is
  exactly what llama.cpp's "smollm" pre-type means (regexes "\\p{N}" then the
  GPT-2 pattern; convert_hf_to_gguf.py assigns "smollm" by hashing the HF
  tokenizer's output on a probe text, so the GGUF's pre value certifies the
  HF behaviour). So the reference here is a `tokenizers.Tokenizer` built from
  the GGUF's vocab and merges with that Sequence pre-tokenizer, control tokens
  (token_type 3) as special added tokens. The script also encodes every
  string with transformers' GGUF-loaded tokenizer and records in the fixture
  how many strings differ (SmolLM2's merges never join two digits, so the
  difference shows only where a space or other character precedes a digit).
Fixture format: {"meta": {...versions...}, "cases": [{"text", "ids", and
"ids_nospecial" (encode_special_tokens=True, i.e. parse_special=0) when the
text holds a special token, "decoded" when HF's decode differs from text}]}.
"""
import argparse
import json
import os
import random
import sys

import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "tokenizers")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
DEFAULT_MODEL = os.path.expanduser("~/.cache/xds/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def handwritten():
    s = [
        "", " ", "  ", "\n", "\t", "a", "Hello", "Hello world", " Hello world", "Hello world!",
        "The quick brown fox jumps over the lazy dog.",
        "it's", "It's", "IT'S", "don't", "DON'T", "they're", "I've", "I'm", "we'll", "he'd", "She'S",
        "'s", "''s", "'", "''", "'''", "a's b't c're d've e'm f'll g'd", "rock 'n' roll", "’s curly apostrophe’s",
        "   leading spaces", "trailing spaces   ", "  both  ", "a  b   c    d", "\t\ttabs\tand\tspaces \t",
        "line1\nline2", "a\n\nb", "a\r\nb\r\n", "\r\n\r\n", " \n ", "   \n\n  x", "x\n \n y", "end\n",
        "\n\n\n", "   ", " " * 100, "\t" * 7, "a" + " " * 40 + "b", "x \t\n\r\f\v y",
        "nbsp\u00a0here", "ideographic\u3000space", "thin\u2009space", "nel\u0085char", "mongolian\u180esep",
        "zero\u200bwidth", "bom\ufeffmark", "line\u2028sep", "para\u2029sep", "em\u2003space", "narrow\u202fnb",
        "1234567890", "0", "42", "3.14159", "1,000,000", "2024-01-31", "12:30:45", "v1.2.3", "0x1F600",
        "1e-10", "-273.15", "9" * 200, "123 456 7890", "a1b2c3", "route66", "１２３ fullwidth", "٠١٢٣٤ arabic digits",
        "१२३ devanagari digits", "x² + y³", "½ cup", "Ⅻ roman", "①②③", " 7", "  77", "\n8",
        "你好，世界！", "我爱自然语言处理。", "今天天气很好，我们去公园散步吧。", "中文English混合text",
        "こんにちは世界", "カタカナとひらがな、漢字。", "東京タワー", "안녕하세요 세계", "한국어 텍스트입니다.",
        "\u1100\u1161\u11a8 decomposed hangul",
        "مرحبا بالعالم", "اللغة العربية جميلة", "שלום עולם", "नमस्ते दुनिया", "हिन्दी भाषा में पाठ",
        "สวัสดีชาวโลก", "Привет, мир!", "Съешь же ещё этих мягких французских булок.", "Γειά σου Κόσμε",
        "Ελληνικά: ά έ ή ί ό ύ ώ", "Tiếng Việt có dấu: ắ ằ ẳ ẵ ặ", "Ça va? Où est l'hôtel?", "Straße über Äpfel",
        "e\u0301 decomposed", "cafe\u0301", "A\u030a ring", "\u1e9b\u0323 long s", "o\u0308\u0304", "q\u0307\u0323",
        "\u0301 leading mark", "ñ vs n\u0303", "Å vs \u212b angstrom", "ﬁ ligature", "ｆｕｌｌｗｉｄｔｈ",
        "😀", "😀😃😄", "👍🏽", "👍🏿 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "🇫🇷🇯🇵", "1️⃣ keycap", "❤️ heart",
        "🧑🏻‍💻 coder", "emoji😀inside", " 🚀 rocket ", "🤖🤖🤖🤖", "✅ done ❌ failed", "©®™", "→ ← ↑ ↓",
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "<div class=\"x\">Hello</div>", "SELECT * FROM t WHERE id = 5;",
        "ls -la | grep foo && echo $HOME", "https://example.com/path?q=1&r=2#frag", "user@example.org",
        "x += 1; y -= 2; z *= 3", "a==b!=c<=d>=e", "arr[0][1]", "/* comment */ // line", "```python\nprint(1)\n```",
        "    indented    code", "if x:\n\tpass\n\telse:\n\t\tpass", "$$\\frac{a}{b}$$", "C:\\Users\\name\\file.txt",
        "!!!", "...", "…", "—", "--", "?!?!", "((()))", "[[[", "]]]", "<<>>", "@@@", "###", "~~~", "___", "***",
        "a.b.c", "foo_bar_baz", "camelCaseWord", "snake_case_42", "UPPER CASE", "MiXeD CaSe",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "text<|im_end|>more", "<|im_start|><|im_end|>", "<<|im_end|>>", "<|im_start|", "|im_start|>", "< |im_start| >",
        "<think>\nreasoning\n</think>\n\nanswer", "<tool_call>{}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
        "<repo_name>xds<file_sep>main.c", "<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>start", "<｜tool▁calls▁begin｜>", "<｜User｜", "<s></s>", "<unk>",
        "special <|endoftext|> in the middle", "  <|im_end|>  spaced", "<|im_end|>\n\n",
    ]
    return s


POOLS = {
    "en": ["hello", "world", "the", "model", "tokenizer", "It's", "we'll", "DON'T", "data", "serving", "experts"],
    "zh": ["你好", "世界", "模型", "专家", "推理", "服务器", "。", "，"],
    "ja": ["こんにちは", "カタカナ", "日本語", "東京", "ですか"],
    "ko": ["안녕", "세계", "모델"],
    "ar": ["مرحبا", "العالم", "نموذج"],
    "hi": ["नमस्ते", "दुनिया", "भाषा"],
    "ru": ["Привет", "мир", "модель", "Ёлка"],
    "el": ["Γειά", "κόσμε", "μοντέλο"],
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧", "🇩🇪", "❤️", "🔥", "🧪", "1️⃣"],
    "digits": ["0", "7", "42", "123", "2024", "3.14", "1e9", "٣", "१२", "99999999"],
    "punct": ["!", "?", ".", ",", ";", ":", "...", "—", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "-", "_", "/", "\\", "@", "#", "$", "%", "^", "&", "*", "+", "="],
    "code": ["x=1", "f(x)", "a[i]", "i++", "->", "::", "&&", "||", "==", "!=", "<=", "#define", "0xFF", "self.x"],
    "marks": ["e\u0301", "a\u0308", "n\u0303", "\u0915\u094d\u0937", "o\u0302\u0301"],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>",
                "<｜end▁of▁sentence｜>", "<file_sep>"],
}
SEPS = ["", " ", "  ", "\n", "\t", " \n", "\n\n", "   ", "\r\n", "\u00a0", "\u3000"]


def random_strings(n, seed=1234):
    rng = random.Random(seed)
    keys = sorted(POOLS)
    out = []
    for i in range(n):
        k = rng.randint(1, 12)
        parts = []
        for _ in range(k):
            pool = POOLS[rng.choice(keys)] if i % 3 else POOLS[keys[i % len(keys)]]
            parts.append(rng.choice(pool))
            parts.append(rng.choice(SEPS) if rng.random() < 0.6 else " ")
        s = "".join(parts)
        if rng.random() < 0.2:
            s = " " + s
        if rng.random() < 0.2:
            s = s.rstrip() + rng.choice(["", " ", "  ", "\n", "\t"])
        out.append(s)
    return out


def unicode_edges():
    """Characters where regex engines' Unicode classes or NFC could disagree."""
    s = [
        "soft\u00adhyphen", "word\u2060joiner", "zwj\u200d", "vs16\ufe0f", "tag\U000E0041", "pua\ue000x",
        "max\U0010fffdcp", "nonchar\ufffe", "ctrl\x01\x02\x1f", "del\x7f", "c1\x80\x9f", "nul\x00inside",
        "unassigned\u0378", "new emoji \U0001fae8\U0001facf", "kawi \U00011f04\U00011f05", "math \U0001d400\U0001d7d8",
        "fraktur \U0001d504", "arabic tatweel \u0640\u0640", "thai \u0e01\u0e34\u0e4d", "tibetan \u0f40\u0f71\u0f72",
        "hebrew points \u05e9\u05c1\u05bc", "devanagari \u0915\u093c", "bengali \u09c7\u09be", "\u0958 excluded",
        "\u2126 ohm \u212a kelvin", "\u0344 \u0340\u0341", "\u0f73 \u0f75 \u0f81", "\u1e0b\u0323", "\u1e0d\u0307",
        "\u00c5\u0328", "a\u0328\u030a", "\u03b1\u0345\u0301\u0313", "\u1fb3\u0301", "\u0041\u0300\u0301\u0302",
        "\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\uac01\u11a8", "\u1100\u1100\u1161", "\u1161\u11a8",
        "\u0300 lone", "\u3099\u309a", "\u304b\u3099", "\u30cf\u309a", "\u0b47\u0b3e", "\u0dd9\u0dcf\u0dca",
        "\U0001d15e", "\U0001d160", "\u2adc", "\uf900\ufa10", "\U0002f800",
        "\U00011938 \U00011935\U00011930 dives akuru", "a\u07fd\u0301 e\u1df6\u0316",
        "a" * 3000, "ab" * 1500, " " * 3000 + "x", "\n" * 500, "1" * 1000, "!" * 1000, "\u4e00" * 800,
        "\U0001f600" * 300,
    ]
    return [x.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in x else x
            for x in s]


def nfc_torture(n, seed=99):
    """Random base letters followed by random runs of combining marks of many
    classes (the canonical reordering and blocking rules of NFC)."""
    rng = random.Random(seed)
    bases = "aeiouAEIOUnNcCsSzZyYwWgGkKlLrRhHtTdDbBpPqQjJxXvVmMfF\u03b1\u03b5\u03b7\u03b9\u03bf\u03c5\u03c9\u0430\u0435\u0438\u3046\u304b\u30cf\u0915\u0627"
    marks = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0304", "\u0306", "\u0307", "\u0308", "\u0309", "\u030a",
             "\u030b", "\u030c", "\u0313", "\u0314", "\u031b", "\u0323", "\u0324", "\u0325", "\u0326", "\u0327",
             "\u0328", "\u032d", "\u0330", "\u0331", "\u0342", "\u0345", "\u05b0", "\u0651", "\u064b", "\u093c",
             "\u094d", "\u3099", "\u309a", "\u0e38", "\u0f71", "\u1dce", "\u20d7",
             # marks newer than HF's NFC tables (class 0 there)
             "\u07fd", "\u0898", "\u08cb", "\u1abf", "\u1ac5", "\u1df6", "\U00010d24", "\U00010f46", "\U0001e130"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice(bases))
            parts.extend(rng.choice(marks) for _ in range(rng.randint(0, 4)))
            if rng.random() < 0.3:
                parts.append(" ")
        out.append("".join(parts))
    return out


def newer_unicode():
    """Code points PCRE2's Unicode 14 tables leave unassigned but HF's regex
    engine classifies (read from src/tokenizer/unicode_regex_extra.h): the
    first, middle and last of every range, between letters, digits, spaces and
    punctuation."""
    import re
    path = os.path.join(ROOT, "src", "tokenizer", "unicode_regex_extra.h")
    text = open(path).read()
    cps = []
    for a, b in re.findall(r"x\{([0-9A-F]+)\}(?:-\\\\x\{([0-9A-F]+)\})?", text):
        a = int(a, 16)
        b = int(b, 16) if b else a
        cps += sorted({a, (a + b) // 2, b})
    ctx = ["a{}b", " {}{}", "{}1", "x {}.", "{} {}", "({})", "{}\n", "\u4e00{}"]
    out = []
    for i in range(0, len(cps), 6):
        chunk = cps[i:i + 6]
        out.append("".join(ctx[(i // 6 + k) % len(ctx)].replace("{}", chr(c)) for k, c in enumerate(chunk)))
    return out


def test_strings():
    s = handwritten() + unicode_edges() + nfc_torture(120) + newer_unicode()
    # a long mixed document (a few KB) to exercise long pre-tokens and speed
    doc = "\n".join(handwritten()[40:140]) * 2
    s.append(doc)
    s += random_strings(300)
    seen, out = set(), []
    for x in s:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def smollm2_from_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)

    def strs(key):
        f = r.fields[key]
        return [bytes(f.parts[d]).decode("utf-8") for d in f.data]

    tokens = strs("tokenizer.ggml.tokens")
    merges = strs("tokenizer.ggml.merges")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[d][0]) for d in f.data]
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[r.fields["tokenizer.ggml.pre"].data[0]]).decode()
    assert pre == "smollm", pre
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges])
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3])

    def scalar(key):
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])
    info = {"add_bos": scalar("tokenizer.ggml.add_bos_token"), "bos": scalar("tokenizer.ggml.bos_token_id"),
            "eos": scalar("tokenizer.ggml.eos_token_id")}
    return tk, info


def encode_cases(tk, strings, specials):
    cases = []
    for s in strings:
        tk.encode_special_tokens = False
        ids = tk.encode(s, add_special_tokens=False).ids
        c = {"text": s, "ids": ids}
        if any(sp in s for sp in specials):
            tk.encode_special_tokens = True
            c["ids_nospecial"] = tk.encode(s, add_special_tokens=False).ids
            tk.encode_special_tokens = False
        dec = tk.decode(ids, skip_special_tokens=False)
        if dec != s:
            c["decoded"] = dec
        cases.append(c)
    return cases


def meta(extra):
    m = {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
         "generator": "tools/gen_tokenizer_fixtures.py"}
    m.update(extra)
    return m


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote %s (%d bytes)" % (os.path.relpath(path, ROOT), os.path.getsize(path)))


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be kind.\nAlways."}, {"role": "user", "content": "你好"},
     {"role": "assistant", "content": "你好！有什么可以帮你？"}, {"role": "user", "content": "😀 emoji?"}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nThe user wants thought.\n</think>\n\nDone."},
     {"role": "user", "content": "Again?"}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>r1</think>a1"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>\n\nr2\n\n</think>\n\n\na2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "no think tags here"}],
    [{"role": "system", "content": "sys one"}, {"role": "user", "content": "u"},
     {"role": "system", "content": "sys two"}, {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "  spaces  \n\nand newlines\n"}, {"role": "assistant", "content": "\n\nleading newlines"}],
    [{"role": "system", "content": "S"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "Use the tool."}, {"role": "assistant", "content": "Calling."},
     {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "second result"},
     {"role": "assistant", "content": "It is 21 degrees."}],
    [{"role": "user", "content": "<tool_response>x</tool_response>"},
     {"role": "assistant", "content": "<think>why</think>ans"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b</think>c"},
     {"role": "user", "content": "d"}, {"role": "assistant", "content": "<think>e</think>f"},
     {"role": "assistant", "content": "<think>g</think>h"}],
]


def chat_fixtures(tok_by_family):
    out = {"meta": meta({}), "conversations": CONVERSATIONS, "renders": []}
    for fam, tok in tok_by_family.items():
        for ci, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                variants = [None] + ([False, True] if fam == "qwen3" else [])
                for think in variants:
                    kw = {} if think is None else {"enable_thinking": think}
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, **kw)
                    out["renders"].append({"family": fam, "conv": ci, "add_generation_prompt": gen,
                                           "enable_thinking": think, "text": text})
    return out


def variant_fixtures(strings):
    """Small trained byte-level BPE tokenizers with the pre-tokenizer options
    and added-token flags the real files do not use (Split behaviors, invert,
    literal patterns, ByteLevel prefix space, Digits runs, lstrip/rstrip,
    normalized added tokens, ignore_merges), each with reference ids."""
    from tokenizers import Regex, normalizers, trainers
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    base.train_from_iterator(strings, trainer)
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    seq = pre_tokenizers.Sequence
    variants = {
        "split_merged_with_previous": seq([pre_tokenizers.Split(" ", "merged_with_previous"), bl]),
        "split_merged_with_next": seq([pre_tokenizers.Split(Regex(r"\d+|,"), "merged_with_next"), bl]),
        "split_contiguous": seq([pre_tokenizers.Split(Regex(r"\s"), "contiguous"), bl]),
        "split_removed": seq([pre_tokenizers.Split(Regex(r"[aeiou]"), "removed"), bl]),
        "split_invert": seq([pre_tokenizers.Split(Regex(r"\p{L}+"), "isolated", invert=True), bl]),
        "bytelevel_prefix_space": pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        "digits_runs": seq([pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "added_lstrip_rstrip_nfc": None,
        "ignore_merges": None,
    }
    sample = [x for x in strings if len(x) < 200][:60] + [
        "a <mask> b", "x<mask>y", "  <mask>  ", "\t<mask>\n", "[X] and [x] and ［X］", "<mask><mask> <mask>",
        "cafe\u0301 [X]", "1,234,567 and 89", "a,b,,c", "word  word   word"]
    out = []
    for name, pre in variants.items():
        tk = Tokenizer.from_str(base.to_str())
        if pre is not None:
            tk.pre_tokenizer = pre
        if name == "added_lstrip_rstrip_nfc":
            tk.normalizer = normalizers.NFC()
            tk.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True, normalized=False)])
            tk.add_tokens([AddedToken("[X]", normalized=True, special=False)])
        if name == "ignore_merges":
            j = json.loads(tk.to_str())
            j["model"]["ignore_merges"] = True
            tk = Tokenizer.from_str(json.dumps(j))
        cases = [{"text": x, "ids": tk.encode(x, add_special_tokens=False).ids} for x in sample]
        out.append({"name": name, "tokenizer_json": tk.to_str(), "cases": cases})
    return {"meta": meta({}), "variants": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("XDS_TEST_MODEL", DEFAULT_MODEL))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    strings = test_strings()
    print("%d test strings" % len(strings))

    from transformers import AutoTokenizer
    qwen_dir, ds_dir = os.path.join(SHARED, "qwen3"), os.path.join(SHARED, "deepseek_v3")
    toks = {}
    # SmolLM2
    sm, sm_info = smollm2_from_gguf(args.model)
    hf_gguf = AutoTokenizer.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model))
    sm_specials = [t.content for t in sm.get_added_tokens_decoder().values()]
    cases = encode_cases(sm, strings, sm_specials)
    differ = sum(1 for c in cases if hf_gguf(c["text"], add_special_tokens=False)["input_ids"] != c["ids"])
    write("ids_smollm2.json", {"meta": meta({"source": "GGUF " + os.path.basename(args.model) + " vocab/merges, "
                                                  "pre-tokenizer Sequence[Digits(individual), ByteLevel]",
                                             "strings_differing_from_transformers_gguf_loader": differ,
                                             "add_bos": sm_info["add_bos"], "bos": sm_info["bos"],
                                             "eos": sm_info["eos"],
                                             "transformers_gguf_bos_eos": [hf_gguf.bos_token_id, hf_gguf.eos_token_id]}),
                               "cases": cases})
    print("smollm2: %d strings differ from transformers' GGUF-loaded tokenizer (plain ByteLevel)" % differ)
    toks["smollm2"] = hf_gguf
    for fam, d in (("qwen3", qwen_dir), ("deepseek_v3", ds_dir)):
        tk = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        specials = [t.content for t in tk.get_added_tokens_decoder().values() if t.special]
        cases = encode_cases(tk, strings, specials)
        at = AutoTokenizer.from_pretrained(d)
        probe = at("hello")["input_ids"]
        # add_bos is the tokenizer_config.json field the C loader exposes;
        # transformers 5.x's TokenizersBackend does not apply it to a
        # ByteLevel tokenizer.json (DeepSeek-V3), recorded separately.
        with open(os.path.join(d, "tokenizer_config.json")) as f:
            add_bos = int(bool(json.load(f).get("add_bos_token", False)))
        seen_bos = int(at.bos_token_id is not None and probe[0] == at.bos_token_id)
        write("ids_%s.json" % fam, {"meta": meta({"source": "../shared/tokenizers/%s/tokenizer.json" % fam,
                                                  "add_bos": add_bos, "transformers_encode_adds_bos": seen_bos,
                                                  "bos": at.bos_token_id if at.bos_token_id is not None else -1,
                                                  "eos": at.eos_token_id if at.eos_token_id is not None else -1}),
                                    "cases": cases})
        toks[fam] = at
    write("chat.json", chat_fixtures(toks))
    write("variants.json", variant_fixtures(strings))


if __name__ == "__main__":
    main()

"""Build tiny, randomly initialised models that the real vLLM server can load offline.

Run with the vLLM venv's python (it has torch, transformers and tokenizers):

    python tests/real_vllm/tiny_models.py OUTDIR

Creates, unless already complete:
  OUTDIR/tiny-chat   LlamaForCausalLM (2 layers, hidden 128, 2 heads, ~0.85 M parameters),
                     byte-level BPE tokenizer (~2048 tokens), ChatML chat template.
  OUTDIR/tiny-embed  BertModel (2 layers, hidden 128), WordPiece vocab (~2048 tokens),
                     sentence-transformers files selecting mean pooling + Normalize.
  OUTDIR/tiny-gqa    tiny-chat with grouped-query attention: 4 query heads sharing 2 KV heads
                     (head_dim 32), for the memory planner's KV-per-token check.
  OUTDIR/tiny-hybrid Gemma2ForCausalLM, 4 layers alternating a 64-token sliding window and full
                     attention (2 KV heads, head_dim 32): the planner's hybrid KV-cache groups.

Weights are random but seeded, so the output is repeatable. The text they generate is
nonsense; they exist to exercise the HTTP protocol, not to answer anything. Each model is
built in a temporary folder beside its destination and renamed into place when finished,
so an interrupted build never leaves a folder that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Bump when the recipe changes, so existing folders get rebuilt.
RECIPE_VERSION = 1
MARKER = ".tiny-model.json"
SEED = 1234
VOCAB_SIZE = 2048
HIDDEN = 128
LAYERS = 2
HEADS = 2
MAX_POSITIONS = 512

CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def log(msg: str) -> None:
    print(f"[tiny_models] {msg}", flush=True)


# --------------------------------------------------------------------------- corpus


def training_corpus(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic, varied text: words, numbers, punctuation, code, JSON, non-ASCII."""
    rng = random.Random(seed)
    common = ["the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "be", "this", "from", "are", "or", "have", "not", "you", "he", "she", "they", "we", "can", "will", "what", "which", "when", "where", "who", "how", "model", "request", "response", "server", "token", "stream", "chat", "completion", "embedding", "gateway", "proxy", "health", "metrics", "error", "timeout", "user", "assistant", "system", "hello", "world", "please", "answer", "question", "data", "time", "number", "value", "list", "name", "test", "result", "first", "last", "next", "more", "less", "good", "new", "old", "big", "small"]
    extra = ["café", "naïve", "Größe", "日本語", "中文", "русский", "emoji 🙂", "ελληνικά", "عربى"]
    syllables = ["ka", "lo", "mi", "ne", "tor", "ven", "sul", "pra", "dex", "qu", "zo", "rith"]
    punct = [".", ",", "!", "?", ":", ";", "...", " -", "'s"]
    out: list[str] = []
    for i in range(lines):
        kind = rng.random()
        if kind < 0.6:
            words = []
            for _ in range(rng.randint(4, 18)):
                r = rng.random()
                if r < 0.75:
                    w = rng.choice(common)
                elif r < 0.9:
                    w = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
                elif r < 0.95:
                    w = str(rng.randint(0, 100000))
                else:
                    w = rng.choice(extra)
                if rng.random() < 0.1:
                    w = w.capitalize()
                words.append(w)
            line = " ".join(words) + rng.choice(punct)
        elif kind < 0.8:
            obj = {rng.choice(common): rng.randint(0, 999), "id": f"req-{i}", "ok": rng.random() < 0.5}
            line = json.dumps(obj)
        else:
            name = rng.choice(common)
            line = f"def {name}_{i}(x, y={rng.randint(0, 9)}):\n    return x * y + {rng.random():.3f}"
        out.append(line)
    return out


# --------------------------------------------------------------------------- chat model


def build_chat(dest: Path, heads: int = HEADS, kv_heads: int = HEADS, name: str = "tiny-chat",
               sliding_window: int | None = None) -> None:
    """tiny-chat's tokenizer and a Llama; with `sliding_window`, a 4-layer Gemma 2 instead, whose
    layers alternate sliding-window and full attention (a hybrid KV cache)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any input tokenizes
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(SEED), trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])]
    )

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.save_pretrained(dest)

    shape = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "torch_dtype": "float32",
    }
    torch.manual_seed(SEED)
    if sliding_window is None:
        config = LlamaConfig(**shape, num_hidden_layers=LAYERS, tie_word_embeddings=False)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    else:
        config = Gemma2Config(**shape, num_hidden_layers=4, head_dim=HIDDEN // heads, sliding_window=sliding_window,
                              layer_types=["sliding_attention", "full_attention"] * 2)
        model = Gemma2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"],
        # Stop on either end marker; random weights rarely produce them, tests set max_tokens.
        eos_token_id=[ids["</s>"], ids["<|im_end|>"]],
        pad_token_id=ids["<pad>"],
    )
    model.save_pretrained(dest, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: vocab {config.vocab_size}, {params / 1e6:.2f} M parameters, {heads} heads / {kv_heads} KV heads")


def build_gqa(dest: Path) -> None:
    build_chat(dest, heads=4, kv_heads=2, name="tiny-gqa")


def build_hybrid(dest: Path) -> None:
    build_chat(dest, heads=4, kv_heads=2, name="tiny-hybrid", sliding_window=64)


def check_chat(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi ünïcødé 🙂 \x00\x7f"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<s><|im_start|>user\n") and text.endswith("<|im_start|>assistant\n"), text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text, "byte-level round trip failed"
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == model.config.vocab_size


# --------------------------------------------------------------------------- embedding model


def wordpiece_vocab(normalizer, pre_tokenizer, specials: list[str]) -> dict[str, int]:
    """A deterministic WordPiece vocab (the tokenizers trainer breaks ties differently per run):
    specials, every ASCII printable character and every character of the corpus, alone and as a
    "##" continuation, then the corpus's most frequent words and word starts/ends."""
    from collections import Counter

    words: Counter[str] = Counter()
    for line in training_corpus(SEED + 1):
        for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            words[word] += 1
    chars = sorted({chr(c) for c in range(33, 127)} | {c for w in words for c in w})
    pieces: Counter[str] = Counter()
    for w, n in words.items():
        if len(w) > 1:
            pieces[w] += 2 * n
        for k in (2, 3, 4):
            if len(w) > k:
                pieces[w[:k]] += n
                pieces["##" + w[-k:]] += n
    vocab = list(specials) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for piece, _n in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= VOCAB_SIZE:
            break
        if piece not in seen:
            seen.add(piece)
            vocab.append(piece)
    return {t: i for i, t in enumerate(vocab)}


def build_embed(dest: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(models.WordPiece(wordpiece_vocab(normalizer, pre_tokenizer, specials), unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
        do_lower_case=True,
    )
    hf_tok.save_pretrained(dest)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (dest / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")

    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=ids["[PAD]"],
        torch_dtype="float32",
    )
    torch.manual_seed(SEED + 1)
    model = BertModel(config, add_pooling_layer=False).to(torch.float32).eval()
    model.save_pretrained(dest, safe_serialization=True)

    # sentence-transformers layout: Transformer -> mean Pooling -> Normalize.
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    write_json(dest / "modules.json", modules)
    (dest / "1_Pooling").mkdir()
    write_json(dest / "1_Pooling" / "config.json", pooling)
    (dest / "2_Normalize").mkdir()
    write_json(dest / "sentence_bert_config.json", {"max_seq_length": MAX_POSITIONS, "do_lower_case": True})
    write_json(
        dest / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    params = sum(p.numel() for p in model.parameters())
    log(f"tiny-embed: vocab {config.vocab_size}, {params / 1e6:.2f} M parameters")


def check_embed(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["Hello embedding world 🙂"], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id, ids
    model = BertModel.from_pretrained(path, add_pooling_layer=False)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    assert hidden.shape[-1] == HIDDEN


# --------------------------------------------------------------------------- driver


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def make_readable(root: Path) -> None:
    """mkdtemp creates 0700 and some writers use 0600; make the model readable like a normal folder."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def is_complete(path: Path, name: str) -> bool:
    try:
        info = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("name") == name and info.get("recipe") == RECIPE_VERSION


def ensure(outdir: Path, name: str, build, check) -> None:
    final = outdir / name
    if is_complete(final, name):
        log(f"{name}: already complete at {final}")
        return
    start = time.monotonic()
    log(f"{name}: building")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=outdir))
    try:
        build(tmp)
        check(tmp)
        write_json(tmp / MARKER, {"name": name, "recipe": RECIPE_VERSION, "seed": SEED})
        make_readable(tmp)
        if final.exists() and not is_complete(final, name):
            log(f"{name}: replacing incomplete or outdated {final}")
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, name):  # lost a race to something that is not a finished model
                raise
            log(f"{name}: a concurrent build finished first; keeping it")
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{name}: done in {time.monotonic() - start:.1f} s -> {final}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="folder that receives tiny-chat/, tiny-embed/, tiny-gqa/, tiny-hybrid/")
    parser.add_argument("--only", choices=["tiny-chat", "tiny-embed", "tiny-gqa", "tiny-hybrid"],
                        help="build just this model")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    outdir = args.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    models = (("tiny-chat", build_chat, check_chat), ("tiny-embed", build_embed, check_embed),
              ("tiny-gqa", build_gqa, check_chat), ("tiny-hybrid", build_hybrid, check_chat))
    for name, build, check in models:
        if args.only in (None, name):
            ensure(outdir, name, build, check)
    return 0


if __name__ == "__main__":
    sys.exit(main())

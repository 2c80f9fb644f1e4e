"""Build tiny LoRA adapters for tiny-chat with PEFT, for the real-vLLM adapter tests.

Run with the vLLM venv's python, after tiny_models.py (it needs peft; `scripts/vllm-cpu-env.sh`
installs it there):

    python tests/real_vllm/tiny_adapters.py MODELS_DIR

Creates, unless already complete, under MODELS_DIR/tiny-chat-adapters/:
  lora-a, lora-b   rank 8 on every attention and MLP projection, seeded differently, with weights
                   large enough that greedy answers differ from the base model's and each other's.
  lora-wide        rank 16: refused by a server started with --max-lora-rank 8.

Why PEFT: it owns the adapter format users bring (adapter_config.json, tensor names, the
`base_model.model.` prefix, the scaling), which vLLM's loader reads; writing the files by hand
would only test our own guess of that format. The initial weights are PEFT's own with
`init_lora_weights=False` (random A and B instead of a zero B, which would change nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

RECIPE_VERSION = 1
MARKER = ".tiny-adapter.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {"lora-a": (8, 101), "lora-b": (8, 202), "lora-wide": (16, 303)}  # name: (rank, seed)


def build(base: Path, dest: Path, rank: int, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(dest, safe_serialization=True)


def is_complete(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text())["recipe"] == RECIPE_VERSION
    except (OSError, ValueError, KeyError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="the folder tiny_models.py built tiny-chat in")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = args.models.resolve() / "tiny-chat"
    out = args.models.resolve() / "tiny-chat-adapters"
    out.mkdir(parents=True, exist_ok=True)
    for name, (rank, seed) in ADAPTERS.items():
        final = out / name
        if is_complete(final):
            print(f"[tiny_adapters] {name}: already complete at {final}", flush=True)
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
        try:
            build(base, tmp, rank, seed)
            (tmp / MARKER).write_text(json.dumps({"recipe": RECIPE_VERSION, "rank": rank, "seed": seed}))
            os.chmod(tmp, 0o755)
            for file in tmp.iterdir():
                os.chmod(file, 0o644)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"[tiny_adapters] {name}: rank {rank} -> {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

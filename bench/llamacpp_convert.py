"""A checkpoint of ours -> GGUF, with llama.cpp's own converter (`convert_hf_to_gguf.py`).

The converter ships in llama.cpp's source, which `llama-cpp-python`'s source distribution
vendors (with `gguf-py`, the GGUF writer it imports): `converter_source()` finds it in
`LLAMA_CPP_SRC` or a cache folder, or downloads with pip the sdist of the installed
llama-cpp-python (else of the pinned version).
Two things the converter needs that our checkpoints do not have:

* `n_ctx` in config.json (its GPT-2 class reads that name, not `n_positions`): the conversion
  runs on a copy of the folder whose config.json has it (weights linked, not copied);
* a known pre-tokenizer: it hashes the token ids of a probe text to name the regex llama.cpp
  should split text with, and stops on a tokenizer it does not know. Ours is a byte-level BPE
  with its own split regex; it is declared "gpt-2". The benchmark feeds token ids, so
  llama.cpp's text splitting never runs.

    python bench/llamacpp_convert.py CHECKPOINT OUT.gguf [--outtype q8_0|f16|f32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from codeparrot_ls.modelfiles import CONFIG_FILE

LLAMA_CPP_PYTHON_PIN = "0.3.36"      # the bench extra's pin (pyproject.toml)
OUTTYPES = ("q8_0", "f16", "f32")
PRE_TOKENIZER = "gpt-2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codeparrot" / "llama.cpp"
# What the conversion takes from the sdist's vendor/llama.cpp/.
SOURCE_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class ConvertError(Exception):
    """The converter is missing or failed; the message says which and why."""


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python's version (its converter writes what its llama.cpp reads), else the pin."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return LLAMA_CPP_PYTHON_PIN


def converter_source(download: bool = True) -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/."""
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        src = Path(env)
        if not (src / "convert_hf_to_gguf.py").is_file():
            raise ConvertError(f"LLAMA_CPP_SRC={env} has no convert_hf_to_gguf.py")
        return src
    version = llama_cpp_python_version()
    src = CACHE / version
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    if not download:
        raise ConvertError(f"no llama.cpp converter in {src} (set LLAMA_CPP_SRC or allow the download)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode or not sdists:
            raise ConvertError(f"pip download of llama-cpp-python {version} failed: "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
        _extract(sdists[0], src)
    return src


def _extract(sdist: Path, dest: Path) -> None:
    """The converter's parts of vendor/llama.cpp/ into `dest` (written under a temporary name first)."""
    part = dest.with_name(dest.name + ".part")
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
        members = []
        for m in tar.getmembers():
            rel = m.name[len(root):] if m.name.startswith(root) else ""
            if rel and (m.isfile() or m.isdir()) and any(rel == p or rel.startswith(p) for p in SOURCE_PARTS):
                m.name = rel
                members.append(m)
        tar.extractall(part, members=members, filter="data")
    if not (part / "convert_hf_to_gguf.py").is_file():
        raise ConvertError(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    part.replace(dest)


def converter_view(checkpoint: Path, dest: Path) -> Path:
    """`dest`: the checkpoint's files linked, config.json rewritten with `n_ctx`."""
    config = json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("model_type") != "gpt2":
        raise ConvertError(f"{checkpoint}: model type {config.get('model_type')!r}; only GPT-2 checkpoints convert")
    dest.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name != CONFIG_FILE:
            (dest / f.name).unlink(missing_ok=True)
            (dest / f.name).symlink_to(f.resolve())
    config["n_ctx"] = config["n_positions"]
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dest


def convert(checkpoint: str | Path, outfile: str | Path, outtype: str = "q8_0", src: Path | None = None) -> Path:
    """Write `outfile` (GGUF) from a GPT-2 checkpoint folder; returns its path."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"outtype {outtype!r}: expected one of {OUTTYPES}")
    src = src or converter_source()
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        view = converter_view(Path(checkpoint), Path(tmp) / "model")
        cmd = [sys.executable, __file__, "--run-converter", str(src), str(view),
               "--outfile", str(outfile), "--outtype", outtype]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode or not outfile.is_file():
        raise ConvertError(f"convert_hf_to_gguf.py failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return outfile


def _run_converter(src: Path, argv: list[str]) -> None:
    """In the converter's process: its gguf-py and conversion package first on the path, our
    tokenizer declared a GPT-2 pre-tokenizer, then its own main()."""
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER
    sys.argv = [str(src / "convert_hf_to_gguf.py"), *argv]
    import runpy

    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-converter"]:
        _run_converter(Path(argv[1]), argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("outfile", type=Path)
    ap.add_argument("--outtype", default="q8_0", choices=OUTTYPES)
    args = ap.parse_args(argv)
    try:
        print(convert(args.checkpoint, args.outfile, args.outtype))
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A GPT-2 checkpoint rebuilt from an exported ONNX graph's weights (fp32 or int8).

`codeparrot export` keeps the tokenizer and config beside the graph, and the graph keeps
every weight under the checkpoint's own names (`h0.attn.c_attn.weight`, `wte`, ...).
When the training checkpoint is gone, this brings the weights back into a Hugging Face
folder that `AutoModelForCausalLM`, `codeparrot pretrain --init-from` and
`codeparrot finetune` load. int8 weights come back with their quantization error
(ONNX Runtime's dynamic quantization: one scale and zero point per tensor), which a
short continued training removes.

    python -m trainer.export.dequantize codeparrot_ls/models/default runs/default-ckpt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from codeparrot_ls import modelfiles as mf

TOKENIZER_FILES = (mf.TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")


def graph_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """Every float weight of the graph by name, int8/uint8 ones dequantized."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    weights = {}
    for name, array in inits.items():
        if name.endswith("_quantized"):
            base = name[: -len("_quantized")]
            zero = inits[base + "_zero_point"].astype(np.float32)
            weights[base] = (array.astype(np.float32) - zero) * inits[base + "_scale"].astype(np.float32)
        elif array.dtype == np.float32 and array.ndim > 0 and not name.endswith(("_scale", "_zero_point")):
            weights[name] = array
    return weights


def state_dict(weights: dict[str, np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """The graph's names mapped onto GPT2LMHeadModel's; the tied embedding from both copies."""
    wte = weights["wte"]
    if "lm_head_t" in weights:  # two independent quantizations of one tensor: their mean is closer
        wte = (wte + weights["lm_head_t"].T) / 2
    sd = {"transformer.wte.weight": wte, "transformer.wpe.weight": weights["wpe"],
          "transformer.ln_f.weight": weights["ln_f.weight"], "transformer.ln_f.bias": weights["ln_f.bias"]}
    for i in range(n_layer):
        for part in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight",
                     "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight",
                     "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
            sd[f"transformer.h.{i}.{part}"] = weights[f"h{i}.{part}"]
    return sd


def dequantize(model_dir: Path, output: Path, dtype: str = "bfloat16") -> Path:
    """Write `output` (a checkpoint folder) from the export folder `model_dir`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir, output = Path(model_dir), Path(output)
    onnx_path = next((model_dir / n for n in (mf.ONNX_INT8_FILE, mf.ONNX_FP32_FILE) if (model_dir / n).is_file()), None)
    if onnx_path is None or not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not an export folder (no model ONNX file or config.json)")
    config = GPT2Config.from_pretrained(model_dir)
    sd = state_dict(graph_weights(onnx_path), config.n_layer)
    model = GPT2LMHeadModel(config)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()},
                                                strict=False)
    # The tied output layer is the embedding itself; nothing else may be left unset.
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise ValueError(f"weights do not match GPT-2: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(getattr(torch, dtype))
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    (tmp / "source.json").write_text(json.dumps({"dequantized_from": str(onnx_path.name)}) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a `codeparrot export` folder")
    parser.add_argument("output", help="the checkpoint folder to write")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    try:
        print(dequantize(Path(args.model_dir), Path(args.output), args.dtype))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

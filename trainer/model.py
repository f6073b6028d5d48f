"""Build a fresh GPT-2-style model from a size preset or a config file.

`codeparrot init-model --tokenizer DIR --model-size tiny` prints the parameter
counts (and with `--output DIR` writes the randomly initialised checkpoint).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from codeparrot_ls.modelfiles import TOKENIZER_FILE
from codeparrot_ls.prompt import END_OF_TEXT

# Fields every preset shares. No dropout: pretraining sees its data about once (nanoGPT,
# Pythia and LLaMA train without it), and dropout in attention keeps PyTorch's fused
# attention kernel off on CPU, where bf16 then gains little (docs/benchmarks.md,
# Pretraining). gelu_pytorch_tanh is GPT-2's gelu_new formula in one kernel.
COMMON = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_pytorch_tanh")

# name -> GPT2Config fields. "small" and "xl" are the seed's 111M and 1.5B models.
PRESETS = {
    "test": dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
    "tiny": dict(n_layer=4, n_embd=256, n_head=4, n_positions=512),
    "mid": dict(n_layer=6, n_embd=384, n_head=6, n_positions=512),   # the shipped default model
    "mini": dict(n_layer=6, n_embd=512, n_head=8, n_positions=1024),
    "small": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
    "xl": dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024),
}

# GPT2Config fields a config file may set; everything else (vocab, special ids,
# tying) comes from the tokenizer so a model can never disagree with it.
CONFIG_FILE_FIELDS = {
    "n_layer", "n_embd", "n_head", "n_positions", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
}


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def read_config_file(path: str | Path) -> dict:
    """Model fields from a JSON or YAML file (a Hugging Face config.json works too)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        fields = yaml.safe_load(text) or {}
    else:
        fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of GPT2Config fields")
    unknown = set(fields) - CONFIG_FILE_FIELDS
    # A full config.json carries bookkeeping keys (architectures, vocab_size...): ignore
    # those, but reject names that are not GPT2Config fields at all (typos).
    typos = {k for k in unknown if not hasattr(GPT2Config(), k)}
    if typos:
        raise ValueError(f"{path}: unknown model fields {sorted(typos)}")
    return {k: v for k, v in fields.items() if k in CONFIG_FILE_FIELDS}


def build_config(preset: str, vocab_size: int, eos_id: int, **overrides) -> GPT2Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown model size {preset!r}; expected one of {sorted(PRESETS)}")
    fields = {**COMMON, **PRESETS[preset], **overrides}
    return GPT2Config(
        vocab_size=padded_vocab_size(vocab_size),
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        tie_word_embeddings=True,
        **fields,
    )


def build_model(preset: str, tokenizer, config_file: str | Path | None = None, **overrides) -> GPT2LMHeadModel:
    """A randomly initialised model sized for `tokenizer` (a `tokenizers.Tokenizer`).

    `config_file` fields override the preset; keyword `overrides` override both.
    """
    eos_id = tokenizer.token_to_id(END_OF_TEXT)
    if eos_id is None:
        raise ValueError(f"the tokenizer has no {END_OF_TEXT} token")
    fields = read_config_file(config_file) if config_file else {}
    config = build_config(preset, tokenizer.get_vocab_size(), eos_id, **{**fields, **overrides})
    return GPT2LMHeadModel(config)


def parameter_counts(model: GPT2LMHeadModel) -> dict[str, int]:
    """Unique parameters (tied embeddings counted once), and without the embeddings."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return {"total": total, "embeddings": embeddings, "non_embedding": total - embeddings}


def training_flops_per_token(config: GPT2Config, seq_length: int) -> float:
    """Forward + backward FLOPs per token: 6N for the weight matmuls plus attention.

    N counts every weight used in a matmul (the tied wte also serves as the output
    layer); the position embedding is a lookup, not a matmul. Attention scores and
    their weighted sum add 12 * layers * width * seq_length (the PaLM appendix count).
    """
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    inner = config.n_inner or 4 * d
    per_layer = d * 3 * d + d * d + 2 * d * inner  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    matmul_params = L * per_layer + V * d
    return 6.0 * matmul_params + 12.0 * L * d * seq_length


IGNORE_INDEX = -100  # label value that is not predicted (transformers' convention)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, a block of rows at a time.

    transformers computes the [tokens, vocab] logits, upcasts all of them to fp32 and runs
    log-softmax, NLL and their backward over that tensor (on the CPU this costs about as much
    as all the matmuls of the tiny model). Here each block of `chunk_size` rows goes through
    logits -> fp32 log-softmax -> loss and gradient (softmax - one-hot) while it is still in
    cache, and the two gradient matmuls follow at once; the full logits never exist.

    Numerics are those of autocast's path: the logits matmul runs in the autocast dtype
    (bf16/fp16; fp32 without autocast), the softmax in fp32, the gradient of the logits is
    rounded to the matmul dtype. The gradients are computed in the forward (the loss is
    a scalar, so backward only scales them); with `grad_enabled` False (pass
    `torch.is_grad_enabled()`: inside forward autograd reports the inputs' flags, not the
    grad mode) only the loss is computed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, grad_enabled: bool = True):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        need_grad = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            valid = targets != IGNORE_INDEX
            safe_targets = torch.where(valid, targets, 0)
            masked = bool((~valid).any())  # one sync per call, none per block
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(h) if need_grad else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
            for start in range(0, h.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                block_h, block_t, block_v = h[rows], safe_targets[rows, None], valid[rows]
                log_probs = torch.log_softmax(block_h @ w.t(), dim=1, dtype=torch.float32)
                total -= (log_probs.gather(1, block_t).squeeze(1) * block_v).sum()
                if not need_grad:
                    continue
                grad_logits = log_probs.exp_()  # softmax ...
                grad_logits.scatter_add_(1, block_t, -block_v.to(grad_logits.dtype)[:, None])  # ... - one-hot
                if masked:
                    grad_logits.mul_(block_v[:, None])
                grad_logits = grad_logits.to(dtype)
                torch.mm(grad_logits, w, out=grad_h[rows])
                grad_w += grad_logits.t() @ block_h
            scale = 1.0 / valid.sum().clamp_min(1).float()
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w, scale)
            ctx.hidden_dtype = hidden.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, scale = ctx.saved_tensors
        factor = scale * grad_output
        return (grad_h.float() * factor).to(ctx.hidden_dtype), grad_w * factor, None, None, None


class LanguageModelLoss(torch.nn.Module):
    """Wraps a GPT2LMHeadModel so that forward(input_ids) returns the mean next-token loss.

    `chunk_size` > 0: the loss comes from the final hidden states through LinearCrossEntropy
    (same value as transformers' `labels=` loss within float rounding, much less work);
    0: transformers' own loss. The wrapper is what Accelerate prepares (so DDP sees one
    forward); `.lm` is the model that is saved. It holds no parameters of its own.
    """

    def __init__(self, lm: GPT2LMHeadModel, chunk_size: int = 256):
        super().__init__()
        if chunk_size and getattr(lm.lm_head, "bias", None) is not None:
            raise ValueError("the chunked loss expects an output layer without bias")
        self.lm, self.chunk_size = lm, chunk_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.chunk_size:
            return self.lm(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        hidden = self.lm.transformer(input_ids=input_ids, use_cache=False).last_hidden_state
        # position t predicts token t + 1, as transformers shifts `labels`
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return LinearCrossEntropy.apply(hidden, self.lm.lm_head.weight, input_ids[:, 1:].reshape(-1),
                                        self.chunk_size, torch.is_grad_enabled())


@dataclass
class InitModelArguments:
    tokenizer: str = field(metadata={"help": "tokenizer folder (tokenizer.json)"})
    model_size: str = field(default="tiny", metadata={"help": f"size preset: {', '.join(PRESETS)}"})
    model_config: str | None = field(
        default=None, metadata={"help": "JSON/YAML file of GPT2Config fields overriding the preset"})
    output: str | None = field(
        default=None, metadata={"help": "also save the random model (with tokenizer files) here"})
    seed: int = field(default=0)


def main(argv: list[str] | None = None) -> int:
    import shutil

    from tokenizers import Tokenizer
    from transformers import HfArgumentParser

    try:
        (args,) = HfArgumentParser(InitModelArguments).parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # unknown flags
        print(f"init-model: {exc}", file=sys.stderr)
        return 2
    tok_file = Path(args.tokenizer) / TOKENIZER_FILE
    if not tok_file.is_file():
        print(f"init-model: no {TOKENIZER_FILE} in {args.tokenizer}", file=sys.stderr)
        return 2
    try:
        torch.manual_seed(args.seed)
        model = build_model(args.model_size, Tokenizer.from_file(str(tok_file)), args.model_config)
    except (ValueError, OSError) as exc:
        print(f"init-model: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    counts = parameter_counts(model)
    print(f"model {args.model_size}: {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, "
          f"{cfg.n_positions} positions, vocab {cfg.vocab_size}")
    print(f"parameters: {counts['total']:,} total ({counts['total'] / 1e6:.2f} M), "
          f"{counts['non_embedding']:,} without embeddings, {counts['embeddings']:,} embeddings")
    print(f"training FLOPs per token at {cfg.n_positions} positions: "
          f"{training_flops_per_token(cfg, cfg.n_positions):.3e}")
    if args.output:
        model.save_pretrained(args.output)
        for f in Path(args.tokenizer).iterdir():
            if f.is_file():
                shutil.copy(f, Path(args.output) / f.name)
        print(f"saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

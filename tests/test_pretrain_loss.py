"""The chunked output-layer + cross-entropy loss against transformers' own `labels=` loss."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from trainer.model import IGNORE_INDEX, LanguageModelLoss, LinearCrossEntropy, build_config


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(build_config("test", vocab_size=300, eos_id=0))  # vocab padded to 320


def loss_and_grads(model, input_ids, chunk_size: int, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = LanguageModelLoss(model, chunk_size)(input_ids)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def batch():
    return torch.randint(0, 320, (3, 40), generator=torch.Generator().manual_seed(1))


def test_fp32_chunked_loss_equals_transformers_loss(batch):
    """fp32: the same sums in another order, so equal to float rounding (1e-5 is ~100 ulps).

    A block size that does not divide the 117 predicted tokens checks the ragged last block.
    """
    model = tiny_model()
    ref_loss, ref_grads = loss_and_grads(model, batch, 0, bf16=False)
    for chunk in (7, 256):
        loss, grads = loss_and_grads(model, batch, chunk, bf16=False)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for name, ref in ref_grads.items():
            assert relative_error(grads[name], ref) < 1e-5, name


def test_bf16_chunked_loss_is_as_close_to_fp32_as_transformers_bf16(batch):
    """Under bf16 autocast neither loss equals the fp32 one; the chunked loss must not be worse.

    Yardstick: transformers' own bf16 path (logits in bf16, upcast, fp32 log-softmax). Both
    round the logits and their gradient to bf16 (relative step 2^-8), so the errors are of
    the same size; allow 2x that error plus a bf16 rounding step for the loss.
    """
    model = tiny_model()
    fp32_loss, fp32_grads = loss_and_grads(model, batch, 0, bf16=False)
    hf_loss, hf_grads = loss_and_grads(model, batch, 0, bf16=True)
    loss, grads = loss_and_grads(model, batch, 16, bf16=True)
    assert abs(loss - fp32_loss) <= 2 * abs(hf_loss - fp32_loss) + 2 ** -8 * abs(fp32_loss) / 64
    for name, ref in fp32_grads.items():
        assert relative_error(grads[name], ref) <= 2 * relative_error(hf_grads[name], ref) + 1e-4, name
    assert relative_error(grads["transformer.wte.weight"], hf_grads["transformer.wte.weight"]) < 0.02


def test_ignored_targets_and_gradient_scaling():
    """Targets of -100 are left out of the mean (and get no gradient); backward scales by its input."""
    torch.manual_seed(3)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 32, (10,))
    targets[[2, 7]] = IGNORE_INDEX

    loss = LinearCrossEntropy.apply(hidden, weight, targets, 3)
    (2.5 * loss).backward()
    got = (loss.detach(), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX)
    (2.5 * ref).backward()
    assert torch.allclose(got[0], ref.detach().to(got[0].dtype), rtol=1e-6)
    assert torch.allclose(got[1], hidden.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got[2], weight.grad, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(got[1][[2, 7]]) == 0

    with torch.no_grad():  # evaluation: the loss only, the same value, and no gradient matmul
        calls = []
        real_mm = torch.mm
        try:
            torch.mm = lambda *a, **k: calls.append(1) or real_mm(*a, **k)
            value = LinearCrossEntropy.apply(hidden, weight, targets, 3, torch.is_grad_enabled()).item()
            assert calls == []
            LinearCrossEntropy.apply(hidden, weight, targets, 3, True)
            assert calls, "the gradient path goes through torch.mm (else this check proves nothing)"
        finally:
            torch.mm = real_mm
        assert value == pytest.approx(loss.item(), rel=1e-12)
    all_ignored = torch.full((10,), IGNORE_INDEX)
    assert LinearCrossEntropy.apply(hidden, weight, all_ignored, 3).item() == 0.0  # no tokens: no NaN


def test_output_layer_with_bias_is_refused():
    model = tiny_model()
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    with pytest.raises(ValueError, match="without bias"):
        LanguageModelLoss(model, 256)
    LanguageModelLoss(model, 0)  # transformers' loss handles it


@pytest.mark.slow
def test_torch_compile_run_saves_a_loadable_checkpoint(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    """--torch-compile: same losses as eager within float reordering; the saved model loads as usual."""
    from test_pretrain import base_args, train_losses
    from transformers import AutoModelForCausalLM
    from safetensors import safe_open

    from trainer.pretrain import main

    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    kw = {"max-steps": 3, "save-steps": 3, "eval-steps": 3, "fim-rate": 0.0}
    assert main(base_args(tiny_corpus_dir, tiny_tokenizer_dir, eager, **kw)) == 0
    assert main(base_args(tiny_corpus_dir, tiny_tokenizer_dir, compiled, **kw, **{"torch-compile": "true"})) == 0
    ref, got = train_losses(eager), train_losses(compiled)
    assert ref.keys() == got.keys() and all(got[k] == pytest.approx(ref[k], rel=1e-4) for k in ref)
    with safe_open(str(compiled / "final" / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert not any("_orig_mod" in k for k in keys) and "transformer.h.0.attn.c_attn.weight" in keys
    model = AutoModelForCausalLM.from_pretrained(compiled / "final")
    assert torch.equal(model.transformer.wte.weight, model.lm_head.weight)  # still tied

"""The ONNX graph of a GPT-2 checkpoint, written node by node from its weights.

Built directly (not traced) so that every layer is the fused ONNX Runtime operator
made for it:

* `GroupQueryAttention` (com.microsoft) with the KV cache in one preallocated buffer
  per layer: `past_key_values.*` and `present.*` are bound to the same memory, so a
  decode step writes one position in place instead of copying the whole cache (the
  copy was 44 % of a decode step at 1,024 positions). It is causal and takes per-row
  lengths, so no padding mask is added to the scores (10 % of its time in a prompt pass).
* The last layer's keys and values are written into its cache by `TensorScatter`, and its
  attention (then its MLP, the final norm and the output layer) runs only for the last
  `logits_to_keep` positions: a prompt pass needs the logits of one position.
* `FastGelu` for the MLP's tanh GELU with its bias; LayerNormalization as one node.

Inputs (codeparrot_ls/modelfiles.py names): input_ids [batch, seq], attention_mask
[batch, past + seq] (only each row's sum is read: the row's length, its tokens at the start of
its cache row), position_ids [batch, seq], logits_to_keep (scalar, 0 allowed), past key/value
[batch, heads, capacity, head_dim] per layer. Outputs: logits [batch, keep, vocab] and present
key/value, the same buffers as the past. The model's metadata carries the graph version
(`modelfiles.ONNX_GRAPH_KEY`), which the engine checks.
"""

from __future__ import annotations

import numpy as np

from codeparrot_ls import modelfiles as mf

MS_DOMAIN = "com.microsoft"
GELU_OPS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu", "gelu": "Gelu"}


class GraphError(Exception):
    """The checkpoint uses a GPT-2 variant this graph does not implement."""


def input_names(n_layer: int) -> list[str]:
    names = [mf.ONNX_INPUT_IDS, mf.ONNX_ATTENTION_MASK, mf.ONNX_POSITION_IDS, mf.ONNX_LOGITS_TO_KEEP]
    for i in range(n_layer):
        names += [mf.past_key_name(i), mf.past_value_name(i)]
    return names


def output_names(n_layer: int) -> list[str]:
    names = [mf.ONNX_LOGITS]
    for i in range(n_layer):
        names += [mf.present_key_name(i), mf.present_value_name(i)]
    return names


def check_supported(config) -> None:
    unsupported = {
        "scale_attn_by_inverse_layer_idx": getattr(config, "scale_attn_by_inverse_layer_idx", False),
        "reorder_and_upcast_attn": getattr(config, "reorder_and_upcast_attn", False),
        "add_cross_attention": getattr(config, "add_cross_attention", False),
    }
    on = [k for k, v in unsupported.items() if v]
    if on:
        raise GraphError(f"GPT-2 options not supported by the exported graph: {', '.join(on)}")
    if not getattr(config, "scale_attn_weights", True):
        raise GraphError("scale_attn_weights=False is not supported by the exported graph")
    if config.activation_function not in GELU_OPS:
        raise GraphError(f"activation {config.activation_function!r} is not supported; "
                         f"expected one of {sorted(GELU_OPS)}")
    if not getattr(config, "tie_word_embeddings", True):
        raise GraphError("untied output embeddings are not supported by the exported graph")


class _Graph:
    """A node list with unique names and numpy initializers."""

    def __init__(self):
        self.nodes, self.inits = [], []
        self.float_tensors: list[str] = []   # outputs to declare float32 in the graph

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs):
        from onnx import helper

        if isinstance(outputs, int):
            outputs = [f"{op_type}_{len(self.nodes)}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{len(self.nodes)}",
                                           domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def build_graph(model, opset: int = 24):
    """An onnx.ModelProto computing `model` (a GPT2LMHeadModel in fp32) with a shared-buffer KV cache."""
    from onnx import TensorProto

    cfg = model.config
    check_supported(cfg)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    n_layer, n_head, n_embd = cfg.n_layer, cfg.n_head, cfg.n_embd
    head_dim, eps = n_embd // n_head, float(cfg.layer_norm_epsilon)
    g = _Graph()

    # Per-row lengths, computed once for all layers. Row b's tokens fill positions [0, length)
    # of its cache row; its length is the sum of its attention_mask row (so no padding is ever
    # attended and no mask is added to the scores; OnnxEngine runs padded prompts row by row).
    seq = g.op("Shape", [mf.ONNX_INPUT_IDS], start=1, end=2)
    total = g.op("Shape", [mf.ONNX_ATTENTION_MASK], start=1, end=2)
    one = g.const("one_i64", np.array([1], np.int64))
    lengths = g.op("ReduceSum", [mf.ONNX_ATTENTION_MASK, one], keepdims=0)                    # [B]
    seqlens_k = g.op("Cast", [g.op("Sub", [lengths, one])], to=TensorProto.INT32)           # index of the last key
    total_len = g.op("Cast", [g.op("Squeeze", [total])], to=TensorProto.INT32)
    write_at = g.op("Sub", [lengths, seq])                                                  # where this pass's keys go

    wte = g.const("wte", sd["transformer.wte.weight"])
    hidden = g.op("Add", [g.op("Gather", [wte, mf.ONNX_INPUT_IDS]),
                          g.op("Gather", [g.const("wpe", sd["transformer.wpe.weight"]), mf.ONNX_POSITION_IDS])])
    gelu = GELU_OPS[cfg.activation_function]
    # Rows whose logits are asked for: the last `logits_to_keep` positions (0: none, for a prompt
    # chunk that only fills the cache; the last attention still needs one query row).
    keep = g.op("Reshape", [mf.ONNX_LOGITS_TO_KEEP, one])
    queries = g.op("Max", [keep, one])
    kept_start = g.op("Sub", [seq, keep])
    queries_at = (g.op("Sub", [seq, queries]), g.op("Sub", [queries, keep]))   # query rows; kept among them
    int_max = g.const("int_max", np.array([np.iinfo(np.int64).max], np.int64))
    pending = None   # the previous sublayer's output and the bias still to add to it
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        w = lambda name: g.const(f"h{i}.{name}", sd[p + name])  # noqa: E731 - a local shorthand
        if pending is None:
            x = g.op("LayerNormalization", [hidden, w("ln_1.weight"), w("ln_1.bias")], axis=-1, epsilon=eps)
        else:
            x, hidden = _residual_norm(g, pending, hidden, w("ln_1.weight"), w("ln_1.bias"), eps)
        qkv = g.op("Add", [g.op("MatMul", [x, w("attn.c_attn.weight")]), w("attn.c_attn.bias")])
        if i < n_layer - 1:
            attn, _, _ = g.op(
                "GroupQueryAttention",
                [qkv, "", "", mf.past_key_name(i), mf.past_value_name(i), seqlens_k, total_len],
                [f"attn_{i}", mf.present_key_name(i), mf.present_value_name(i)],
                domain=MS_DOMAIN, num_heads=n_head, kv_num_heads=n_head)
        else:
            # Past the last layer's keys and values nothing feeds the cache: its attention (and
            # everything after it) runs only on the rows whose logits are kept.
            attn = _last_attention(g, i, qkv, queries_at, int_max, one, write_at, seqlens_k, total_len, n_head,
                                   head_dim)
            hidden = g.op("Slice", [hidden, kept_start, int_max, one])
        pending = (g.op("MatMul", [attn, w("attn.c_proj.weight")]), w("attn.c_proj.bias"))
        x, hidden = _residual_norm(g, pending, hidden, w("ln_2.weight"), w("ln_2.bias"), eps)
        up = g.op("MatMul", [x, w("mlp.c_fc.weight")])
        act = (g.op("FastGelu", [up, w("mlp.c_fc.bias")], domain=MS_DOMAIN) if gelu == "FastGelu" else
               g.op("Gelu", [g.op("Add", [up, w("mlp.c_fc.bias")])], domain=MS_DOMAIN))
        pending = (g.op("MatMul", [act, w("mlp.c_proj.weight")]), w("mlp.c_proj.bias"))
    out, _ = _residual_norm(g, pending, hidden, g.const("ln_f.weight", sd["transformer.ln_f.weight"]),
                        g.const("ln_f.bias", sd["transformer.ln_f.bias"]), eps)

    # The tied output layer gets its own transposed copy: a MatMul weight that int8 quantizes.
    g.op("MatMul", [out, g.const("lm_head_t", sd["transformer.wte.weight"].T)], [mf.ONNX_LOGITS])

    return _model_proto(g, cfg, opset)


def _model_proto(g: _Graph, cfg, opset: int):
    """The graph's nodes and weights as a model: its inputs and outputs declared, its version set."""
    from onnx import TensorProto, helper

    n_head, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    kv_shape = ["batch", n_head, "capacity", head_dim]
    inputs = [helper.make_tensor_value_info(mf.ONNX_INPUT_IDS, i64, ["batch", "seq"]),
              helper.make_tensor_value_info(mf.ONNX_ATTENTION_MASK, i64, ["batch", "total"]),
              helper.make_tensor_value_info(mf.ONNX_POSITION_IDS, i64, ["batch", "seq"]),
              helper.make_tensor_value_info(mf.ONNX_LOGITS_TO_KEEP, i64, [])]
    outputs = [helper.make_tensor_value_info(mf.ONNX_LOGITS, f32, ["batch", "kept", cfg.vocab_size])]
    for i in range(cfg.n_layer):
        inputs += [helper.make_tensor_value_info(mf.past_key_name(i), f32, kv_shape),
                   helper.make_tensor_value_info(mf.past_value_name(i), f32, kv_shape)]
        outputs += [helper.make_tensor_value_info(mf.present_key_name(i), f32, kv_shape),
                    helper.make_tensor_value_info(mf.present_value_name(i), f32, kv_shape)]
    # Types ONNX's inference cannot give past com.microsoft ops (int8 quantization looks them up).
    typed = [helper.make_tensor_value_info(name, f32, None) for name in g.float_tensors]
    graph = helper.make_graph(g.nodes, "codeparrot_gpt2_kv", inputs, outputs, initializer=g.inits, value_info=typed)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                          helper.make_opsetid(MS_DOMAIN, 1)],
                                    producer_name="codeparrot export")
    model_proto.ir_version = min(model_proto.ir_version, 10)
    helper.set_model_props(model_proto, {mf.ONNX_GRAPH_KEY: mf.ONNX_GRAPH_VERSION})
    return model_proto


def _last_attention(g: _Graph, i: int, qkv: str, queries_at: tuple[str, str], int_max: str, one: str, write_at: str,
                    seqlens_k: str, total_len: str, n_head: int, head_dim: int) -> str:
    """The last layer's attention for the kept rows only: the new keys and values of every row
    are written into the cache buffer in place (TensorScatter), then GroupQueryAttention reads
    that buffer as a shared past, with no new keys of its own, for the last max(keep, 1)
    queries. `queries_at`: where the query rows start, and where the kept rows start among them."""
    query_start, kept_in_queries = queries_at
    width = n_head * head_dim
    q, k, v = g.op("Split", [qkv, g.const(f"split_{i}", np.array([width] * 3, np.int64))], 3, axis=-1)
    batch_seq_heads = g.const("heads_shape", np.array([0, 0, n_head, head_dim], np.int64))
    caches = []
    for new, past, present in ((k, mf.past_key_name(i), mf.present_key_name(i)),
                               (v, mf.past_value_name(i), mf.present_value_name(i))):
        split_heads = g.op("Reshape", [new, batch_seq_heads])
        g.float_tensors.append(split_heads)
        heads = g.op("Transpose", [split_heads], perm=[0, 2, 1, 3])                             # [B, H, S, D]
        caches.append(g.op("TensorScatter", [past, heads, write_at], [present], axis=-2))
    zero = g.const("zero_i64", np.array([0], np.int64))
    no_keys = g.op("Slice", [k, zero, zero, one])                                            # [B, 0, width]
    attn = g.op("GroupQueryAttention",
                [g.op("Slice", [q, query_start, int_max, one]), no_keys, no_keys, caches[0], caches[1], seqlens_k,
                 total_len], [f"attn_{i}"], domain=MS_DOMAIN, num_heads=n_head, kv_num_heads=n_head)
    return g.op("Slice", [attn, kept_in_queries, int_max, one])


def _residual_norm(g: _Graph, pending: tuple[str, str], residual: str, gamma: str, beta: str, eps: float):
    """(LayerNorm(residual + x + bias), residual + x + bias).

    Plain Add + LayerNormalization: ONNX Runtime's fused SkipLayerNormalization measured
    slower on CPU for prompt chunks (0.31 vs 0.06 ms for 256 tokens at width 256; 92 vs 35 us
    for 128 in the whole graph's profile).
    """
    x, x_bias = pending
    summed = g.op("Add", [g.op("Add", [x, x_bias]), residual])
    return g.op("LayerNormalization", [summed, gamma, beta], axis=-1, epsilon=eps), summed

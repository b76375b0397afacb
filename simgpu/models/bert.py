"""BERT-base (Devlin et al. 2019) encoder, as Hugging Face's ``BertModel`` with pooler.

Written so that an inter-operator scheduler sees the parallelism a transformer layer
has: the query, key and value projections are three independent ``linear`` ops, and
each of the 12 attention heads is its own branch (slice of Q, K^T and V, scores matmul,
softmax, context matmul) until the heads' concat. A fused, batched-heads kernel would
hide all of that. Embeddings are three ``embedding`` gathers (word, position, token
type) summed by one add, then LayerNorm. The 1/sqrt(d) score scaling is fused into the
softmax (``scale`` attribute: no separate op, as fused attention kernels do); no
attention mask (every sequence is full length); dropout is omitted (inference).
Op names follow Hugging Face's modules ("encoder.layer.3.attention.self.query");
per-head ops are "...attention.self.head{h}.{q,k,v,scores,softmax,context}".
The graph has three inputs, as ``BertModel.forward`` does: ``input_ids`` and
``token_type_ids`` (batch x seq_len) and ``position_ids`` (1 x seq_len, broadcast).
"""

from __future__ import annotations

import math

from simgpu.errors import GraphError
from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

VOCAB = 30522
MAX_POSITIONS = 512
TYPE_VOCAB = 2


def _embedding(b: GraphBuilder, ids: str, vocab: int, dim: int, name: str) -> str:
    return b.op("embedding", [ids], name, num_embeddings=vocab, embedding_dim=dim)


def _layernorm(b: GraphBuilder, x: str, name: str) -> str:
    return b.op("layernorm", [x], name, axis=-1, eps=1e-12)


def _self_attention(b: GraphBuilder, x: str, hidden: int, heads: int) -> str:
    d = hidden // heads
    q = b.linear(x, hidden, name="query")
    k = b.linear(x, hidden, name="key")
    v = b.linear(x, hidden, name="value")
    kt = b.op("transpose", [k], "key_t", perm=(0, 2, 1))  # batch x hidden x seq
    rank = len(b.shape(x))
    contexts = []
    for h in range(heads):
        lo, hi = h * d, (h + 1) * d
        with b.scope(f"head{h}"):
            qh = b.op("slice", [q], "q", axis=rank - 1, begin=lo, end=hi)
            kh = b.op("slice", [kt], "k", axis=rank - 2, begin=lo, end=hi)
            vh = b.op("slice", [v], "v", axis=rank - 1, begin=lo, end=hi)
            s = b.op("matmul", [qh, kh], "scores")
            p = b.op("softmax", [s], "softmax", axis=-1, scale=1.0 / math.sqrt(d))
            contexts.append(b.op("matmul", [p, vh], "context"))
    return b.concat(contexts, axis=-1, name="concat")


def _layer(b: GraphBuilder, x: str, hidden: int, heads: int, intermediate: int) -> str:
    with b.scope("attention"):
        with b.scope("self"):
            a = _self_attention(b, x, hidden, heads)
        with b.scope("output"):
            a = b.linear(a, hidden, name="dense")
            a = b.add(a, x, name="add")
            a = _layernorm(b, a, "LayerNorm")
    with b.scope("intermediate"):
        h = b.linear(a, intermediate, act="gelu", name="dense")
    with b.scope("output"):
        h = b.linear(h, hidden, name="dense")
        h = b.add(h, a, name="add")
        return _layernorm(b, h, "LayerNorm")


def bert_base(
    batch: int = 1,
    seq_len: int = 128,
    dtype: str = "fp32",
    image_size: int | None = None,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    intermediate: int = 3072,
) -> OpGraph:
    """BERT-base encoder and pooler for ``batch`` sequences of ``seq_len`` tokens.

    ``image_size`` exists only to reject it clearly: BERT has no image input.
    """
    if image_size is not None:
        raise GraphError(f"bert_base takes no image size (got {image_size}); it has seq_len")
    if not 1 <= seq_len <= MAX_POSITIONS:
        raise GraphError(f"bert_base: seq_len {seq_len} outside 1..{MAX_POSITIONS}")
    if hidden % heads:
        raise GraphError(f"bert_base: hidden size {hidden} not divisible by {heads} heads")
    b = GraphBuilder("bert_base", dtype)
    ids = b.input((batch, seq_len), name="input_ids")
    types = b.input((batch, seq_len), name="token_type_ids")
    positions = b.input((1, seq_len), name="position_ids")
    with b.scope("embeddings"):
        w = _embedding(b, ids, VOCAB, hidden, "word_embeddings")
        p = _embedding(b, positions, MAX_POSITIONS, hidden, "position_embeddings")
        t = _embedding(b, types, TYPE_VOCAB, hidden, "token_type_embeddings")
        x = b.op("add", [w, t, p], "add")
        x = _layernorm(b, x, "LayerNorm")
    for i in range(layers):
        with b.scope(f"encoder.layer.{i}"):
            x = _layer(b, x, hidden, heads, intermediate)
    with b.scope("pooler"):
        first = b.op("slice", [x], "first_token", axis=1, begin=0, end=1)
        first = b.flatten(first, name="flatten")  # batch x 1 x hidden -> batch x hidden
        b.linear(first, hidden, act="tanh", name="dense")
    return b.build()


register_model(
    "bert_base",
    bert_base,
    None,
    "BERT-base (Devlin et al. 2019), 12 layers, 128 tokens; per-head attention branches",
)

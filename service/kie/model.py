"""The KIE graph models: a geometry-aware transformer over a document's segments.

Every segment is a node; attention between two segments is biased by their relative geometry
(gaps, alignment, overlap, direction), so the model learns which neighbours matter — the
"graph over segments" of Doc2Graph / Doc2GraphFormer, with dense attention because forms have at
most a few hundred segments. SER classifies each node; RE scores each ordered (key, value) pair.
"""

from __future__ import annotations

import math

import paddle
from paddle import nn
from paddle.nn import functional as F

from service.kie.features import HASH_BUCKETS, N_BOX, N_PAIR, N_TEXT_CUES

NEG_INF = -1e4


class GeometryAttention(nn.Layer):
    """One transformer layer whose attention logits get a learned bias from pair geometry."""

    def __init__(self, dim: int, heads: int, pair_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pair_bias = nn.Linear(pair_dim, heads)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: paddle.Tensor, pairs: paddle.Tensor, key_mask: paddle.Tensor) -> paddle.Tensor:
        """h: (B, N, D); pairs: (B, N, N, P); key_mask: (B, N) with 1 for real segments."""
        # reshape's 0 keeps that dimension: shapes stay dynamic when the model is exported
        qkv = self.qkv(h).reshape([0, 0, 3, self.heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, Dh)
        logits = paddle.matmul(q, k, transpose_y=True) / math.sqrt(self.head_dim)
        logits = logits + self.pair_bias(pairs).transpose([0, 3, 1, 2])
        logits = logits + (1.0 - key_mask[:, None, None, :]) * NEG_INF
        attention = self.dropout(F.softmax(logits, axis=-1))
        mixed = paddle.matmul(attention, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.heads * self.head_dim])
        h = self.norm1(h + self.dropout(self.out(mixed)))
        return self.norm2(h + self.dropout(self.ffn(h)))


class SegmentEncoder(nn.Layer):
    """Embeds segments (hashed n-grams + text cues + box) and mixes them with geometry attention."""

    def __init__(self, dim: int = 128, heads: int = 4, layers: int = 3, embed_dim: int = 64,
                 pair_dim: int = 32, dropout: float = 0.1, extra_node_features: int = 0,
                 pair_features: int = N_PAIR) -> None:
        super().__init__()
        self.embed = nn.Embedding(HASH_BUCKETS, embed_dim, padding_idx=0)
        node_in = embed_dim + N_TEXT_CUES + N_BOX + extra_node_features
        self.project = nn.Sequential(nn.Linear(node_in, dim), nn.LayerNorm(dim), nn.GELU())
        self.pair_project = nn.Sequential(nn.Linear(pair_features, pair_dim), nn.GELU(), nn.Linear(pair_dim, pair_dim), nn.GELU())
        self.layers = nn.LayerList([GeometryAttention(dim, heads, pair_dim, dropout) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: paddle.Tensor, cues: paddle.Tensor, boxes: paddle.Tensor,
                pairs: paddle.Tensor, mask: paddle.Tensor,
                extra: paddle.Tensor | None = None) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Returns node states (B, N, D) and projected pair features (B, N, N, pair_dim)."""
        token_mask = (tokens > 0).astype("float32").unsqueeze(-1)
        text = (self.embed(tokens) * token_mask).sum(axis=2) / token_mask.sum(axis=2).clip(min=1.0)
        node = [text, cues, boxes] + ([extra] if extra is not None else [])
        h = self.dropout(self.project(paddle.concat(node, axis=-1)))
        g = self.pair_project(pairs)
        for layer in self.layers:
            h = layer(h, g, mask)
        return h, g


class SerModel(nn.Layer):
    """Semantic entity recognition: a label distribution per segment."""

    def __init__(self, num_labels: int, **encoder_args: object) -> None:
        super().__init__()
        self.encoder = SegmentEncoder(**encoder_args)  # type: ignore[arg-type]
        dim = self.encoder.project[0].weight.shape[1]
        self.classify = nn.Linear(dim, num_labels)

    def forward(self, tokens, cues, boxes, pairs, mask):  # noqa: ANN001, D102 - shapes as in the encoder
        h, _ = self.encoder(tokens, cues, boxes, pairs, mask)
        return self.classify(h)  # (B, N, labels) logits


class ReModel(nn.Layer):
    """Relation extraction: for every segment j, which segment i (if any) is its key.

    Inputs are the encoder's plus each segment's label probabilities from SER (keys are questions
    or headers, values answers or questions). Output ``[b, i, j]`` is the logit of "i is the key
    of j"; the extra last row ``[b, N, j]`` is the logit of "j has no key" (a learned constant).
    """

    def __init__(self, num_labels: int, rank: int = 64, **encoder_args: object) -> None:
        super().__init__()
        self.encoder = SegmentEncoder(extra_node_features=num_labels, **encoder_args)  # type: ignore[arg-type]
        dim = self.encoder.project[0].weight.shape[1]
        pair_dim = self.encoder.pair_project[2].weight.shape[1]
        self.as_key = nn.Linear(dim, rank)
        self.as_value = nn.Linear(dim, rank)
        self.geometry = nn.Linear(pair_dim, rank)
        self.score = nn.Sequential(nn.GELU(), nn.Linear(rank, rank), nn.GELU(), nn.Linear(rank, 1))
        self.no_key = self.create_parameter([1], default_initializer=nn.initializer.Constant(2.0))

    def forward(self, tokens, cues, boxes, pairs, mask, label_probs):  # noqa: ANN001, D102
        h, g = self.encoder(tokens, cues, boxes, pairs, mask, label_probs)
        joint = self.as_key(h).unsqueeze(2) + self.as_value(h).unsqueeze(1) + self.geometry(g)
        logits = self.score(joint).squeeze(-1)  # (B, N, N)
        itself = pairs[:, :, :, -1]  # the last pair feature is the identity
        not_a_key = ((1.0 - mask.unsqueeze(2)) + itself).clip(max=1.0)  # padding rows, self-links
        logits = logits - not_a_key * 1e4
        no_key = paddle.zeros_like(logits[:, :1, :]) + self.no_key
        return paddle.concat([logits, no_key], axis=1)  # (B, N + 1, N)


class GroupModel(nn.Layer):
    """Entity grouping over words: which word (if any) comes just before each word in its entity.

    Nodes are OCR words; the pair features are the encoder's plus the grouping's own (same OCR
    line, next / previous word of the line, and at ``candidate_index`` whether i may precede j at
    all: see ``service/kie/grouping.py``). Outputs: word-level label logits (B, N, labels), an auxiliary task that
    teaches where one entity ends and the next begins, and ``[b, i, j]``, the logit of "i is the
    word just before j in j's entity", with a last row ``[b, N, j]``: "j starts an entity".
    """

    def __init__(self, num_labels: int, candidate_index: int, rank: int = 64, **encoder_args: object) -> None:
        super().__init__()
        self.candidate_index = candidate_index
        self.encoder = SegmentEncoder(**encoder_args)  # type: ignore[arg-type]
        dim = self.encoder.project[0].weight.shape[1]
        pair_dim = self.encoder.pair_project[2].weight.shape[1]
        self.classify = nn.Linear(dim, num_labels)
        self.as_previous = nn.Linear(dim, rank)
        self.as_next = nn.Linear(dim, rank)
        self.geometry = nn.Linear(pair_dim, rank)
        self.score = nn.Sequential(nn.GELU(), nn.Linear(rank, rank), nn.GELU(), nn.Linear(rank, 1))
        self.starts = nn.Linear(dim, 1)

    def forward(self, tokens, cues, boxes, pairs, mask):  # noqa: ANN001, D102 - shapes as in the encoder
        h, g = self.encoder(tokens, cues, boxes, pairs, mask)
        joint = self.as_previous(h).unsqueeze(2) + self.as_next(h).unsqueeze(1) + self.geometry(g)
        logits = self.score(joint).squeeze(-1)  # (B, N, N)
        allowed = pairs[:, :, :, self.candidate_index] * mask.unsqueeze(2)  # never padding or itself
        logits = logits - (1.0 - allowed) * 1e4
        starts = self.starts(h).transpose([0, 2, 1])  # (B, 1, N)
        return self.classify(h), paddle.concat([logits, starts], axis=1)


def parameter_count(model: nn.Layer) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if not p.stop_gradient))

"""PP-OCRv4 mobile recognition as a trainable dygraph network, loaded from a registry folder.

The registry holds the model as an old-IR inference program (``inference.pdmodel`` +
``inference.pdiparams``). That program cannot be trained as is (``paddle.jit.load`` gives no
usable gradients), so the same network is defined here as a ``paddle.nn.Layer`` and the inference
parameters are copied in.

The network follows the exported graph, not the training-time definition: PP-LCNetV3's
re-parameterizable blocks appear already fused (one convolution with a bias, then a learnable
scalar affine, hard-swish and a second scalar affine), the backbone always ends with the
inference-time 3×2 average pool (48 px high input → one row, width / 8 time steps), and only the
CTC branch exists (PP-OCRv4's NRTR training branch is not in the export). Its parameters are
created in the order the program uses them, so the two pair up one to one by position; every pair
is shape-checked. Reading, pairing and writing the parameters is shared with the detector
(:mod:`service.finetune.common`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402

from service.finetune.common import (  # noqa: E402
    AffineScalar,
    ChannelGate,
    InferenceProgram,
    TensorRecord,
    WeightMismatch,
    assign_paired,
    make_divisible,
    pair_by_order,
    read_inference_params,
    run_program_as_written,
)

WeightMismatchError = WeightMismatch  # the recognizer's name for the shared error

NUM_CLASSES = 6625  # CTC blank + 6623 dictionary characters + space
BACKBONE_SCALE = 0.95
AFFINE_LR_MULT = 0.1  # PP-LCNetV3 trains its scalar affines at a tenth of the learning rate

# (kernel, in, out, stride, squeeze-excite) per block, before channel scaling: PP-LCNetV3, rec variant.
_LCNET_REC_STAGES: tuple[tuple[tuple[int, int, int, tuple[int, int], bool], ...], ...] = (
    ((3, 16, 32, (1, 1), False),),
    ((3, 32, 64, (1, 1), False), (3, 64, 64, (1, 1), False)),
    ((3, 64, 128, (2, 1), False), (3, 128, 128, (1, 1), False)),
    ((3, 128, 256, (1, 2), False),) + ((5, 256, 256, (1, 1), False),) * 4,
    ((5, 256, 512, (2, 1), True), (5, 512, 512, (1, 1), True),
     (5, 512, 512, (2, 1), False), (5, 512, 512, (1, 1), False)),
)


# --------------------------------------------------------------------------- network


class FusedRepConv(nn.Layer):
    """A re-parameterized PP-LCNetV3 layer as exported: conv (with bias) → affine → hard-swish → affine."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: tuple[int, int] = (1, 1),
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups)
        self.affine = AffineScalar(AFFINE_LR_MULT)
        self.act_affine = AffineScalar(AFFINE_LR_MULT)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act_affine(F.hardswish(self.affine(self.conv(x))))


class LCNetBlock(nn.Layer):
    """Depthwise rep-conv, optional squeeze-excite, pointwise rep-conv."""

    def __init__(self, kernel: int, in_ch: int, out_ch: int, stride: tuple[int, int], use_se: bool) -> None:
        super().__init__()
        self.depthwise = FusedRepConv(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.se = ChannelGate(in_ch) if use_se else None
        self.pointwise = FusedRepConv(in_ch, out_ch, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.depthwise(x)
        if self.se is not None:
            x = self.se(x)
        return self.pointwise(x)


class LCNetV3Rec(nn.Layer):
    """PP-LCNetV3 backbone (rec variant, fused): N×3×48×W → N×C×1×(W/8)."""

    def __init__(self, scale: float = BACKBONE_SCALE) -> None:
        super().__init__()
        stem_ch = make_divisible(16 * scale)
        self.stem_conv = nn.Conv2D(3, stem_ch, 3, stride=2, padding=1, bias_attr=False)
        self.stem_bn = nn.BatchNorm2D(stem_ch)
        blocks = []
        for stage in _LCNET_REC_STAGES:
            for kernel, in_ch, out_ch, stride, use_se in stage:
                blocks.append(LCNetBlock(kernel, make_divisible(in_ch * scale), make_divisible(out_ch * scale),
                                         stride, use_se))
        self.blocks = nn.LayerList(blocks)
        self.out_channels = make_divisible(512 * scale)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem_bn(self.stem_conv(x))
        for block in self.blocks:
            x = block(x)
        # The exported (inference-time) pooling; training in PaddleOCR pools adaptively to 40
        # columns instead, which would not match the graph we write back into.
        return F.avg_pool2d(x, kernel_size=[3, 2])


class ConvBNSwish(nn.Layer):
    """Conv (no bias) → BatchNorm → swish."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int] | int,
                 padding: tuple[int, int] | int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, padding=padding, bias_attr=False)
        self.bn = nn.BatchNorm2D(out_ch)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.swish(self.bn(self.conv(x)))


class SelfAttention(nn.Layer):
    """Multi-head self-attention over the sequence (SVTR's global mixer)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        dim = x.shape[-1]
        qkv = self.qkv(x).reshape([0, -1, 3, self.heads, dim // self.heads]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.attn_drop(F.softmax(q.matmul(k.transpose([0, 1, 3, 2])), axis=-1))
        out = attn.matmul(v).transpose([0, 2, 1, 3]).reshape([0, -1, dim])
        return self.proj_drop(self.proj(out))


class FeedForward(nn.Layer):
    """Linear → swish → dropout → linear → dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.drop(F.swish(self.fc1(x)))))


class TransformerBlock(nn.Layer):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mixer = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SVTRNeck(nn.Layer):
    """SVTR sequence encoder (PP-OCRv4 CTC branch): N×C×1×T → N×T×dims.

    With ``guide`` (PP-OCRv4's ``use_guide``, the exported graph's clone of the backbone output)
    no gradient flows from this branch back into the backbone; turn it off to let CTC fine-tuning
    update the backbone as well. Inference is the same either way.
    """

    def __init__(self, in_ch: int, dims: int = 120, depth: int = 2, heads: int = 8,
                 mlp_ratio: float = 2.0, dropout: float = 0.1, guide: bool = True) -> None:
        super().__init__()
        self.guide = guide
        self.conv1 = ConvBNSwish(in_ch, in_ch // 8, (1, 3), padding=(0, 1))
        self.conv2 = ConvBNSwish(in_ch // 8, dims, 1)
        self.blocks = nn.LayerList([TransformerBlock(dims, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dims, epsilon=1e-6)
        self.conv3 = ConvBNSwish(dims, in_ch, 1)
        self.conv4 = ConvBNSwish(2 * in_ch, in_ch // 8, (1, 3), padding=(0, 1))
        self.conv1x1 = ConvBNSwish(in_ch // 8, dims, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        shortcut = x.detach() if self.guide else x
        z = self.conv2(self.conv1(shortcut))
        _, channels, height, width = z.shape
        z = z.flatten(2).transpose([0, 2, 1])
        for block in self.blocks:
            z = block(z)
        z = self.norm(z).reshape([0, height, width, channels]).transpose([0, 3, 1, 2])
        z = paddle.concat([shortcut, self.conv3(z)], axis=1)
        z = self.conv1x1(self.conv4(z))
        return z.squeeze(2).transpose([0, 2, 1])


class PPOCRv4RecModel(nn.Layer):
    """PP-OCRv4 mobile recognition, CTC branch: N×3×48×W BGR in [-1, 1] → N×(W/8)×classes logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, guide: bool = True) -> None:
        super().__init__()
        self.backbone = LCNetV3Rec()
        self.neck = SVTRNeck(self.backbone.out_channels, guide=guide)
        self.head = nn.Linear(120, num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Unnormalized class scores per time step (what CTC loss takes)."""
        return self.head(self.neck(self.backbone(x)))

    def probabilities(self, x: paddle.Tensor) -> paddle.Tensor:
        """Softmax over classes: what the exported inference program outputs."""
        return F.softmax(self.forward(x), axis=-1)

    def freeze_batchnorm(self) -> None:
        """Put every BatchNorm in eval mode: running statistics stay as loaded and are used as is."""
        for layer in self.sublayers():
            if isinstance(layer, _BATCH_NORMS):
                layer.eval()


_BATCH_NORMS = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D)


@contextmanager
def eval_mode(model: nn.Layer) -> Iterator[nn.Layer]:
    """Run ``model`` in eval mode, then give every sublayer back the mode it had (frozen BN included)."""
    modes = [(layer, layer.training) for layer in [model, *model.sublayers()]]
    model.eval()
    try:
        yield model
    finally:
        for layer, training in modes:
            layer.training = training


# --------------------------------------------------------------------------- inference files


def model_tensors(model: nn.Layer) -> list[tuple[str, paddle.Tensor]]:
    """The network's parameters and BatchNorm statistics, in the order the forward pass uses them."""
    return list(model.state_dict().items())


def pair_with_program(model: nn.Layer, program: InferenceProgram,
                      records: dict[str, TensorRecord]) -> list[tuple[str, str]]:
    """Pair (dygraph name, program name) by order of use; raise on any count or shape mismatch."""
    return [(p.network_name, p.program_name)
            for p in pair_by_order(model_tensors(model), program, records, what="the network's tensors")]


def load_inference_weights(model: nn.Layer, model_dir: Path) -> list[tuple[str, str]]:
    """Copy a registry folder's inference parameters into ``model``; returns the (ours, graph) pairs.

    Raises ``WeightMismatchError`` (nothing is assigned) when counts, shapes or dtypes do not match.
    """
    program, records = read_inference_params(model_dir)
    pairs = pair_by_order(model_tensors(model), program, records, what="the network's tensors")
    assign_paired(pairs, records)
    return [(p.network_name, p.program_name) for p in pairs]


def load_rec_model(model_dir: Path, guide: bool = True) -> PPOCRv4RecModel:
    """A dygraph PP-OCRv4 recognizer holding the weights of a registry folder, in eval mode."""
    model = PPOCRv4RecModel(guide=guide)
    load_inference_weights(model, model_dir)
    model.eval()
    return model


def run_program(model_dir: Path, batch: np.ndarray, optimized: bool = True, use_mkldnn: bool = True) -> np.ndarray:
    """The registry folder's inference program on ``batch`` (its softmax output).

    ``optimized``: through the service's :class:`service.ocr.engine.Predictor` (oneDNN, fused
    passes). Otherwise the program exactly as written (no IR optimization, plain CPU kernels): the
    reference for checking the network definition, since the service's fusions (conv+BN folding,
    fused self-attention, FC) move wide batches by a few 1e-4 on their own.
    """
    if optimized:
        from service.ocr.engine import Predictor

        return Predictor(Path(model_dir), use_mkldnn=use_mkldnn)(np.ascontiguousarray(batch, dtype=np.float32))
    return run_program_as_written(model_dir, batch)


def parity(model_dir: Path, batch: np.ndarray, model: PPOCRv4RecModel | None = None,
           optimized: bool = True, use_mkldnn: bool = True) -> float:
    """Max |difference| between the dygraph model's probabilities and ``paddle.inference``'s on ``batch``.

    ``batch`` is N×3×48×W float32 in [-1, 1]; ``model`` defaults to a fresh one loaded from
    ``model_dir``; ``optimized`` / ``use_mkldnn`` choose the inference path (see :func:`run_program`).
    """
    model = model if model is not None else load_rec_model(model_dir)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    with eval_mode(model), paddle.no_grad():
        ours = model.probabilities(paddle.to_tensor(batch)).numpy()
    theirs = run_program(model_dir, batch, optimized=optimized, use_mkldnn=use_mkldnn)
    if ours.shape != theirs.shape:
        raise WeightMismatchError(f"output shapes differ: dygraph {ours.shape}, inference {theirs.shape}")
    return float(np.abs(ours - theirs).max())

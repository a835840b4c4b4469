"""The shipped PP-OCRv4 mobile text detector as a trainable dygraph network.

The registry's ``models/det/base`` holds an old-IR inference program: PP-LCNetV3 backbone (scale
0.75, detection variant) → RSE-FPN neck (96 channels) → DB head. PaddleOCR exports it with every
re-parameterizable block already fused (one convolution with a bias per block, no branches), so the
network here is built in that fused form: its layers are one-to-one with the program's operators,
and the program's 234 parameters are copied in by order of use, with their shapes checked
(``load_inference_weights``; reading and pairing are shared with the recognizer,
``service.finetune.common``). The DB threshold branch is not exported by PaddleOCR (inference only
needs the probability map): here it starts from scratch and is used only for training.

``forward`` returns the probability map like the inference program; ``forward_train`` also returns
the threshold map and DB's approximate binary map. ``probability_parity`` checks the network
against ``paddle.inference`` on the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from service.finetune.common import (
    AffineScalar,
    ChannelGate,
    InferenceProgram,
    PairedTensor,
    TensorRecord,
    WeightMismatch,
    assign_paired,
    make_divisible,
    pair_by_order,
    read_inference_params,
    run_program_as_written,
)

# PP-LCNetV3 detection variant, per stage: (kernel, in channels, out channels, stride, SE) at
# scale 1.0; channels are scaled and rounded with ``make_divisible``.
_BACKBONE_STAGES: tuple[tuple[tuple[int, int, int, int, bool], ...], ...] = (
    ((3, 16, 32, 1, False),),
    ((3, 32, 64, 2, False), (3, 64, 64, 1, False)),
    ((3, 64, 128, 2, False), (3, 128, 128, 1, False)),
    ((3, 128, 256, 2, False),) + ((5, 256, 256, 1, False),) * 4,
    ((5, 256, 512, 2, True), (5, 512, 512, 1, True), (5, 512, 512, 1, False), (5, 512, 512, 1, False)),
)
# Channels the four backbone outputs are projected to before the neck (scale 1.0).
_BACKBONE_OUT = (16, 24, 56, 480)
SCALE = 0.75
NECK_CHANNELS = 96
DB_K = 50.0


class AffineHardSwish(nn.Layer):
    """Hard-swish followed by a learnable affine scalar pair."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = AffineScalar()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.affine(F.hardswish(x))


class FusedRepConv(nn.Layer):
    """A re-parameterized block in its exported form: one biased convolution, an affine scalar
    pair and, unless it downsamples, the affine hard-swish."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups)
        self.affine = AffineScalar()
        self.act = AffineHardSwish() if stride != 2 else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.affine(self.conv(x))
        return self.act(x) if self.act is not None else x


class LCNetBlock(nn.Layer):
    """Depthwise k×k (fused) → optional SE → pointwise 1×1 (fused)."""

    def __init__(self, kernel: int, in_ch: int, out_ch: int, stride: int, use_se: bool) -> None:
        super().__init__()
        self.dw = FusedRepConv(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.se = ChannelGate(in_ch, slope=0.1666667) if use_se else None
        self.pw = FusedRepConv(in_ch, out_ch, 1, 1, groups=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw(x)


class LCNetV3Det(nn.Layer):
    """PP-LCNetV3 backbone, detection variant: four feature maps at strides 4, 8, 16, 32."""

    def __init__(self, scale: float = SCALE) -> None:
        super().__init__()
        stem = make_divisible(16 * scale)
        self.stem_conv = nn.Conv2D(3, stem, 3, stride=2, padding=1, bias_attr=False)
        self.stem_bn = nn.BatchNorm2D(stem)
        self.stages = nn.LayerList([
            nn.Sequential(*[
                LCNetBlock(k, make_divisible(i * scale), make_divisible(o * scale), s, se)
                for k, i, o, s, se in stage
            ])
            for stage in _BACKBONE_STAGES
        ])
        stage_out = [make_divisible(stage[-1][2] * scale) for stage in _BACKBONE_STAGES[1:]]
        self.out_channels = [int(c * scale) for c in _BACKBONE_OUT]
        self.projections = nn.LayerList([
            nn.Conv2D(i, o, 1) for i, o in zip(stage_out, self.out_channels)
        ])

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        x = self.stem_bn(self.stem_conv(x))
        x = self.stages[0](x)
        features = []
        for stage in self.stages[1:]:
            x = stage(x)
            features.append(x)
        return [proj(f) for proj, f in zip(self.projections, features)]


class ResidualGateConv(nn.Layer):
    """RSE-FPN unit: an unbiased convolution whose output ``y`` becomes ``y + y * SE(y)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, padding=kernel // 2, bias_attr=False)
        self.gate = ChannelGate(out_ch, slope=0.2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.conv(x)
        return y + y * self.gate.weights(y)


class RSEFPN(nn.Layer):
    """Top-down FPN with residual SE units; the four levels are upsampled to stride 4 and
    concatenated (coarsest first) into ``out_ch`` channels."""

    def __init__(self, in_channels: list[int], out_ch: int = NECK_CHANNELS) -> None:
        super().__init__()
        self.lateral = nn.LayerList([ResidualGateConv(c, out_ch, 1) for c in in_channels])
        self.smooth = nn.LayerList([ResidualGateConv(out_ch, out_ch // 4, 3) for _ in in_channels])

    def forward(self, features: list[paddle.Tensor]) -> paddle.Tensor:
        # Operator order matters for weight loading: laterals from the coarsest level down.
        lat = [None] * len(features)
        for i in reversed(range(len(features))):
            lat[i] = self.lateral[i](features[i])
        merged = [None] * len(features)
        merged[-1] = lat[-1]
        for i in reversed(range(len(features) - 1)):
            merged[i] = lat[i] + F.upsample(merged[i + 1], scale_factor=2, mode="nearest")
        smoothed = [None] * len(features)
        for i in reversed(range(len(features))):
            smoothed[i] = self.smooth[i](merged[i])
        n = len(features)
        ups = [
            F.upsample(smoothed[i], scale_factor=2 ** i, mode="nearest") if i else smoothed[i]
            for i in range(n)
        ]
        return paddle.concat(ups[::-1], axis=1)


class DBBranch(nn.Layer):
    """DB head branch: 3×3 conv → BN-ReLU → 2× transposed conv → BN-ReLU → 2× transposed conv →
    sigmoid, a map at the input resolution."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        mid = in_ch // 4
        self.conv = nn.Conv2D(in_ch, mid, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(mid)
        self.up1 = nn.Conv2DTranspose(mid, mid, 2, stride=2)
        self.bn2 = nn.BatchNorm2D(mid)
        self.up2 = nn.Conv2DTranspose(mid, 1, 2, stride=2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.relu(self.bn1(self.conv(x)))
        x = F.relu(self.bn2(self.up1(x)))
        return F.sigmoid(self.up2(x))


class DBDetector(nn.Layer):
    """PP-OCRv4 mobile DB text detector: image batch (N×3×H×W, H and W multiples of 32) →
    text probability map (N×1×H×W)."""

    def __init__(self, k: float = DB_K) -> None:
        super().__init__()
        self.backbone = LCNetV3Det()
        self.neck = RSEFPN(self.backbone.out_channels)
        self.binarize = DBBranch(NECK_CHANNELS)
        self.threshold = DBBranch(NECK_CHANNELS)  # not in the shipped weights: trained from scratch
        self.k = k

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """The probability (shrink) map, as the inference program computes it."""
        return self.binarize(self.neck(self.backbone(x)))

    def forward_train(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """(probability map, threshold map, approximate binary map), each N×1×H×W."""
        features = self.neck(self.backbone(x))
        prob = self.binarize(features)
        thresh = self.threshold(features)
        binary = F.sigmoid(self.k * (prob - thresh))
        return prob, thresh, binary

    def freeze_batch_norm(self) -> None:
        """Keep every BatchNorm on its running statistics (fine-tuning runs on tiny batches)."""
        for layer in self.sublayers():
            if isinstance(layer, nn.BatchNorm2D):
                layer.eval()


# ---------------------------------------------------------------------------------------------
# The inference program's parameters


def _leaf_tensors(layer: nn.Layer) -> list[tuple[str, paddle.Tensor]]:
    """A leaf layer's tensors in the order its operators use them."""
    if isinstance(layer, nn.BatchNorm2D):
        return [("weight", layer.weight), ("bias", layer.bias), ("_mean", layer._mean), ("_variance", layer._variance)]
    if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose)):
        tensors = [("weight", layer.weight)]
        return tensors + ([("bias", layer.bias)] if layer.bias is not None else [])
    if isinstance(layer, AffineScalar):
        return [("scale", layer.scale), ("bias", layer.bias)]
    raise TypeError(f"no tensor order known for {type(layer).__name__}")


def inference_tensors(model: DBDetector) -> list[tuple[str, paddle.Tensor]]:
    """(qualified name, tensor) of the network's inference path (probability map) in the order of
    use, traced from one forward pass on a small input."""
    called: list[nn.Layer] = []
    names = {id(layer): name for name, layer in model.named_sublayers()}
    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, (nn.BatchNorm2D, nn.Conv2D, nn.Conv2DTranspose, AffineScalar)):
            hooks.append(layer.register_forward_pre_hook(lambda lyr, _inputs: called.append(lyr)))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, 3, 64, 64], dtype="float32"))
    finally:
        for hook in hooks:
            hook.remove()
        if was_training:
            model.train()
    ordered: list[tuple[str, paddle.Tensor]] = []
    seen: set[int] = set()
    for layer in called:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        ordered.extend((f"{names[id(layer)]}.{attr}", tensor) for attr, tensor in _leaf_tensors(layer))
    return ordered


@dataclass(frozen=True)
class WeightPairing:
    """How the program's parameters map onto the network's tensors."""

    pairs: list[tuple[str, str]]  # (program name, network name) in order of use
    mismatches: int


def pair_parameters(
    model: DBDetector, program: InferenceProgram, records: dict[str, TensorRecord]
) -> list[PairedTensor]:
    """Pair program parameters with network tensors by order of use; raises ``WeightMismatch``
    when the counts or any shape differ."""
    return pair_by_order(inference_tensors(model), program, records,
                         what="the network's inference path (PP-OCRv4 mobile detector)")


def load_inference_weights(model: DBDetector, model_dir: Path) -> WeightPairing:
    """Copy a registry folder's inference parameters into the network (all 234 of the PP-OCRv4
    mobile detector; the threshold branch is left as it is). Raises ``WeightMismatch`` on any
    count, shape or dtype difference, before anything is copied."""
    program, records = read_inference_params(model_dir)
    pairs = pair_parameters(model, program, records)
    assign_paired(pairs, records)
    return WeightPairing(pairs=[(p.program_name, p.network_name) for p in pairs], mismatches=0)


def load_detector(model_dir: Path) -> DBDetector:
    """A ``DBDetector`` with a registry folder's inference weights, in eval mode."""
    model = DBDetector()
    load_inference_weights(model, model_dir)
    model.eval()
    return model


def probability_map(model: DBDetector, batch: np.ndarray) -> np.ndarray:
    """The network's probability map for an NCHW float32 batch, as numpy."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            out = model(paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32)))
    finally:
        if was_training:
            model.train()
    return out.numpy()


def inference_probability_map(model_dir: Path, batch: np.ndarray, optimized: bool = True) -> np.ndarray:
    """The probability map ``paddle.inference`` computes for a registry folder on an NCHW batch.

    ``optimized``: through the service's ``Predictor`` (oneDNN, fusion passes: conv+BN folding and
    the like move the result by a few 1e-5); otherwise the program as written, with no IR passes.
    """
    from service.ocr.engine import Predictor

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if optimized:
        return Predictor(Path(model_dir), threads=1)(batch)
    return run_program_as_written(model_dir, batch, threads=1)


def probability_parity(model: DBDetector, model_dir: Path, batch: np.ndarray, optimized: bool = True) -> float:
    """Max |difference| between the network's probability map and ``paddle.inference`` running the
    registry folder on the same batch (see ``inference_probability_map``)."""
    ours = probability_map(model, batch)
    theirs = inference_probability_map(model_dir, batch, optimized)
    if ours.shape != theirs.shape:
        raise WeightMismatch(f"probability maps differ in shape: {ours.shape} vs {theirs.shape}")
    return float(np.abs(ours - theirs).max())

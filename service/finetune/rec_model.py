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
is shape-checked.

The parameters file is read and written here without static mode: a combined ``.pdiparams`` is the
program's persistable tensors in name order, each a small header (LoD, tensor version, a
``TensorDesc`` protobuf) followed by the raw little-endian data. Keeping each header and swapping
only the data writes a file in exactly the original format (unchanged values give the same bytes).
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle import ParamAttr, nn  # noqa: E402
from paddle.base.proto import framework_pb2  # noqa: E402
from paddle.nn.initializer import Constant  # noqa: E402

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


def scaled_channels(channels: float, divisor: int = 16) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never more than 10% below it."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


# --------------------------------------------------------------------------- network


class ScalarAffine(nn.Layer):
    """``scale * x + bias`` with one learnable scalar each (PP-LCNetV3's learnable affine block)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = self.create_parameter(
            [1], attr=ParamAttr(learning_rate=AFFINE_LR_MULT), default_initializer=Constant(1.0))
        self.bias = self.create_parameter(
            [1], attr=ParamAttr(learning_rate=AFFINE_LR_MULT), default_initializer=Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.scale * x + self.bias


class FusedRepConv(nn.Layer):
    """A re-parameterized PP-LCNetV3 layer as exported: conv (with bias) → affine → hard-swish → affine."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: tuple[int, int] = (1, 1),
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups)
        self.affine = ScalarAffine()
        self.act_affine = ScalarAffine()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act_affine(F.hardswish(self.affine(self.conv(x))))


class SqueezeExcite(nn.Layer):
    """Channel attention: global average → 1×1 conv → ReLU → 1×1 conv → hard-sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2D(channels, channels // reduction, 1)
        self.expand = nn.Conv2D(channels // reduction, channels, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        gate = F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class LCNetBlock(nn.Layer):
    """Depthwise rep-conv, optional squeeze-excite, pointwise rep-conv."""

    def __init__(self, kernel: int, in_ch: int, out_ch: int, stride: tuple[int, int], use_se: bool) -> None:
        super().__init__()
        self.depthwise = FusedRepConv(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.se = SqueezeExcite(in_ch) if use_se else None
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
        stem_ch = scaled_channels(16 * scale)
        self.stem_conv = nn.Conv2D(3, stem_ch, 3, stride=2, padding=1, bias_attr=False)
        self.stem_bn = nn.BatchNorm2D(stem_ch)
        blocks = []
        for stage in _LCNET_REC_STAGES:
            for kernel, in_ch, out_ch, stride, use_se in stage:
                blocks.append(LCNetBlock(kernel, scaled_channels(in_ch * scale), scaled_channels(out_ch * scale),
                                         stride, use_se))
        self.blocks = nn.LayerList(blocks)
        self.out_channels = scaled_channels(512 * scale)

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


class WeightMismatchError(ValueError):
    """The inference parameters do not fit the dygraph network (count, shape or dtype)."""


_DTYPES = {
    framework_pb2.VarType.FP32: np.dtype("<f4"),
    framework_pb2.VarType.FP64: np.dtype("<f8"),
    framework_pb2.VarType.FP16: np.dtype("<f2"),
    framework_pb2.VarType.INT32: np.dtype("<i4"),
    framework_pb2.VarType.INT64: np.dtype("<i8"),
    framework_pb2.VarType.INT8: np.dtype("i1"),
    framework_pb2.VarType.UINT8: np.dtype("u1"),
    framework_pb2.VarType.BOOL: np.dtype("?"),
}
# Inputs that may hold parameters, in the order an op reads them (batch_norm: scale, bias, mean, variance).
_SLOT_ORDER = ("Input", "X", "Filter", "Y", "Scale", "Bias", "Mean", "Variance")


@dataclass(frozen=True)
class InferenceProgram:
    """The parameters of an old-IR inference program.

    ``use_order``: persistable tensors in the order the ops first read them.
    ``file_order``: the order of the combined ``.pdiparams`` file (sorted by name).
    """

    use_order: tuple[str, ...]
    file_order: tuple[str, ...]


def read_program(pdmodel: Path) -> InferenceProgram:
    """List an ``inference.pdmodel``'s parameters without building the program."""
    program = framework_pb2.ProgramDesc.FromString(Path(pdmodel).read_bytes())
    block = program.blocks[0]
    persistable = {v.name for v in block.vars
                   if v.persistable and v.type.type == framework_pb2.VarType.DENSE_TENSOR}
    use_order: list[str] = []
    for op in block.ops:
        slots = {slot.parameter: list(slot.arguments) for slot in op.inputs}
        ordered = [s for s in _SLOT_ORDER if s in slots] + sorted(s for s in slots if s not in _SLOT_ORDER)
        for slot in ordered:
            for name in slots[slot]:
                if name in persistable and name not in use_order:
                    use_order.append(name)
    unused = persistable.difference(use_order)
    if unused:
        raise WeightMismatchError(f"{pdmodel}: persistable tensors read by no op: {sorted(unused)}")
    return InferenceProgram(use_order=tuple(use_order), file_order=tuple(sorted(persistable)))


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a combined parameters file: its serialized header and its values."""

    header: bytes
    value: np.ndarray


def _take(data: memoryview, pos: int, size: int, path: Path) -> tuple[memoryview, int]:
    if pos + size > len(data):
        raise WeightMismatchError(f"{path} ends early at byte {pos} (wanted {size} more)")
    return data[pos:pos + size], pos + size


def read_params_file(pdiparams: Path, names: tuple[str, ...]) -> dict[str, TensorRecord]:
    """Read a combined ``.pdiparams`` holding ``names`` (in file order) into name → record."""
    path = Path(pdiparams)
    data = memoryview(path.read_bytes())
    pos = 0
    records: dict[str, TensorRecord] = {}
    for name in names:
        start = pos
        chunk, pos = _take(data, pos, 12, path)
        version, lod_levels = struct.unpack("<IQ", chunk)
        if version != 0:
            raise WeightMismatchError(f"{path}: tensor {name} has unknown version {version}")
        for _ in range(lod_levels):
            chunk, pos = _take(data, pos, 8, path)
            (level_bytes,) = struct.unpack("<Q", chunk)
            _, pos = _take(data, pos, level_bytes, path)
        chunk, pos = _take(data, pos, 8, path)
        tensor_version, desc_size = struct.unpack("<Ii", chunk)
        if tensor_version != 0:
            raise WeightMismatchError(f"{path}: tensor {name} has unknown tensor version {tensor_version}")
        chunk, pos = _take(data, pos, desc_size, path)
        desc = framework_pb2.VarType.TensorDesc.FromString(bytes(chunk))
        if desc.data_type not in _DTYPES:
            raise WeightMismatchError(f"{path}: tensor {name} has unsupported data type {desc.data_type}")
        dtype, shape = _DTYPES[desc.data_type], tuple(int(d) for d in desc.dims)
        header = bytes(data[start:pos])
        chunk, pos = _take(data, pos, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, path)
        records[name] = TensorRecord(header=header, value=np.frombuffer(chunk, dtype=dtype).reshape(shape).copy())
    if pos != len(data):
        raise WeightMismatchError(f"{path}: {len(data) - pos} bytes left after {len(names)} tensors")
    return records


def write_params_file(pdiparams: Path, names: tuple[str, ...], records: dict[str, TensorRecord],
                      values: dict[str, np.ndarray]) -> None:
    """Write a combined ``.pdiparams``: each original header, then the new (or original) values."""
    with open(pdiparams, "wb") as out:
        for name in names:
            record = records[name]
            value = values.get(name, record.value)
            if value.shape != record.value.shape:
                raise WeightMismatchError(f"{name}: new value has shape {value.shape}, file has {record.value.shape}")
            out.write(record.header)
            out.write(np.ascontiguousarray(value, dtype=record.value.dtype).tobytes())


def read_inference_params(model_dir: Path) -> tuple[InferenceProgram, dict[str, TensorRecord]]:
    """The program's parameter orders and the parameter values of a registry folder."""
    model_dir = Path(model_dir)
    program = read_program(model_dir / "inference.pdmodel")
    return program, read_params_file(model_dir / "inference.pdiparams", program.file_order)


def model_tensors(model: nn.Layer) -> list[tuple[str, paddle.Tensor]]:
    """The network's parameters and BatchNorm statistics, in the order the forward pass uses them."""
    return list(model.state_dict().items())


def pair_with_program(model: nn.Layer, program: InferenceProgram,
                      shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """Pair (dygraph name, program name) by order of use; raise on any count or shape mismatch."""
    ours = model_tensors(model)
    if len(ours) != len(program.use_order):
        raise WeightMismatchError(
            f"the network has {len(ours)} tensors, the inference program {len(program.use_order)}")
    pairs, problems = [], []
    for (name, tensor), graph_name in zip(ours, program.use_order):
        if tuple(tensor.shape) != shapes[graph_name]:
            problems.append(f"{name} {tuple(tensor.shape)} ≠ {graph_name} {shapes[graph_name]}")
        pairs.append((name, graph_name))
    if problems:
        raise WeightMismatchError(f"{len(problems)} shape mismatches: " + "; ".join(problems[:10]))
    return pairs


def load_inference_weights(model: nn.Layer, model_dir: Path) -> list[tuple[str, str]]:
    """Copy a registry folder's inference parameters into ``model``; returns the (ours, graph) pairs.

    Raises ``WeightMismatchError`` (nothing is assigned) when counts or shapes do not match.
    """
    program, records = read_inference_params(model_dir)
    pairs = pair_with_program(model, program, {n: r.value.shape for n, r in records.items()})
    state = model.state_dict()
    for name, graph_name in pairs:
        tensor = state[name]
        value = records[graph_name].value
        if np.dtype(value.dtype) != np.dtype(tensor.numpy().dtype):
            raise WeightMismatchError(f"{name}: dtype {tensor.dtype} ≠ {graph_name} {value.dtype}")
        tensor.set_value(value)
    return pairs


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
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if optimized:
        from service.ocr.engine import Predictor

        return Predictor(Path(model_dir), use_mkldnn=use_mkldnn)(batch)
    from paddle import inference

    config = inference.Config(str(Path(model_dir) / "inference.pdmodel"), str(Path(model_dir) / "inference.pdiparams"))
    config.disable_gpu()
    config.enable_new_ir(False)
    config.switch_ir_optim(False)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


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

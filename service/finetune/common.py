"""What the dygraph PP-OCRv4 detector and recognizer share: PP-LCNetV3 building blocks, reading an
old-IR inference program's parameters, pairing them with a network's tensors, and exporting.

Weights are paired by position: each model lists its tensors in the order its forward pass uses them
(the detector traces a forward pass, the recognizer creates its parameters in that order), and
``read_program`` lists the program's persistable tensors in the order its operators first read
them; the two lists must have the same length and every pair the same shape.

The parameters file is read and written without static mode: a combined ``.pdiparams`` is the
program's persistable tensors in name order, each a small header (LoD, tensor version, a
``TensorDesc`` protobuf) followed by the raw little-endian data. Keeping each header and swapping
only the data writes a file in exactly the original format (unchanged values give the same bytes).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import ParamAttr, nn
from paddle.base.proto import framework_pb2
from paddle.nn.initializer import Constant

# --------------------------------------------------------------------------- building blocks


def make_divisible(value: float, divisor: int = 16) -> int:
    """Round a (scaled) channel count to a multiple of ``divisor``, never more than 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class AffineScalar(nn.Layer):
    """``scale * x + bias`` with one learnable scalar each (PP-LCNetV3's learnable affine block).

    ``lr_mult`` scales the optimizer's learning rate for the two scalars (PP-LCNetV3 trains them
    at a tenth of it in the recognizer).
    """

    def __init__(self, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.scale = self.create_parameter(
            [1], attr=ParamAttr(learning_rate=lr_mult), default_initializer=Constant(1.0))
        self.bias = self.create_parameter(
            [1], attr=ParamAttr(learning_rate=lr_mult), default_initializer=Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.scale * x + self.bias


class ChannelGate(nn.Layer):
    """Squeeze-and-excitation: global average → 1×1 conv (÷ ``reduction``) → ReLU → 1×1 conv →
    hard-sigmoid (``slope``, offset 0.5); called, it scales the input by the gate."""

    def __init__(self, channels: int, slope: float = 0.1666667, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2D(channels, channels // reduction, 1)
        self.expand = nn.Conv2D(channels // reduction, channels, 1)
        self.slope = slope

    def weights(self, x: paddle.Tensor) -> paddle.Tensor:
        """The per-channel gate, N×C×1×1."""
        s = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
        return F.hardsigmoid(self.expand(s), slope=self.slope, offset=0.5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * self.weights(x)


# --------------------------------------------------------------------------- inference files


class WeightMismatch(ValueError):
    """The inference program's parameters do not fit the dygraph network (count, shape or dtype)."""


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
# Inputs that may hold parameters, in the order an op reads them (batch_norm: scale, bias, mean,
# variance; elementwise ops: X then Y).
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
        raise WeightMismatch(f"{pdmodel}: persistable tensors read by no op: {sorted(unused)}")
    return InferenceProgram(use_order=tuple(use_order), file_order=tuple(sorted(persistable)))


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a combined parameters file: its serialized header and its values."""

    header: bytes
    value: np.ndarray


def _take(data: memoryview, pos: int, size: int, path: Path) -> tuple[memoryview, int]:
    if pos + size > len(data):
        raise WeightMismatch(f"{path} ends early at byte {pos} (wanted {size} more)")
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
            raise WeightMismatch(f"{path}: tensor {name} has unknown version {version}")
        for _ in range(lod_levels):
            chunk, pos = _take(data, pos, 8, path)
            (level_bytes,) = struct.unpack("<Q", chunk)
            _, pos = _take(data, pos, level_bytes, path)
        chunk, pos = _take(data, pos, 8, path)
        tensor_version, desc_size = struct.unpack("<Ii", chunk)
        if tensor_version != 0:
            raise WeightMismatch(f"{path}: tensor {name} has unknown tensor version {tensor_version}")
        chunk, pos = _take(data, pos, desc_size, path)
        desc = framework_pb2.VarType.TensorDesc.FromString(bytes(chunk))
        if desc.data_type not in _DTYPES:
            raise WeightMismatch(f"{path}: tensor {name} has unsupported data type {desc.data_type}")
        dtype, shape = _DTYPES[desc.data_type], tuple(int(d) for d in desc.dims)
        header = bytes(data[start:pos])
        chunk, pos = _take(data, pos, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, path)
        records[name] = TensorRecord(header=header, value=np.frombuffer(chunk, dtype=dtype).reshape(shape).copy())
    if pos != len(data):
        raise WeightMismatch(f"{path}: {len(data) - pos} bytes left after {len(names)} tensors")
    return records


def write_params_file(pdiparams: Path, names: tuple[str, ...], records: dict[str, TensorRecord],
                      values: Mapping[str, np.ndarray]) -> None:
    """Write a combined ``.pdiparams``: each original header, then the new (or original) values."""
    with open(pdiparams, "wb") as out:
        for name in names:
            record = records[name]
            value = values.get(name, record.value)
            if value.shape != record.value.shape:
                raise WeightMismatch(f"{name}: new value has shape {value.shape}, file has {record.value.shape}")
            out.write(record.header)
            out.write(np.ascontiguousarray(value, dtype=record.value.dtype).tobytes())


def read_inference_params(model_dir: Path) -> tuple[InferenceProgram, dict[str, TensorRecord]]:
    """The program's parameter orders and the parameter values of a registry folder."""
    model_dir = Path(model_dir)
    if not (model_dir / "inference.pdmodel").is_file() or not (model_dir / "inference.pdiparams").is_file():
        raise FileNotFoundError(f"{model_dir} has no inference.pdmodel with inference.pdiparams")
    program = read_program(model_dir / "inference.pdmodel")
    return program, read_params_file(model_dir / "inference.pdiparams", program.file_order)


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class PairedTensor:
    """A program parameter and the network tensor it pairs with."""

    program_name: str
    network_name: str
    tensor: paddle.Tensor


def pair_by_order(tensors: Sequence[tuple[str, paddle.Tensor]], program: InferenceProgram,
                  records: Mapping[str, TensorRecord], what: str = "the network") -> list[PairedTensor]:
    """Pair the network's (name, tensor) list, in order of use, with the program's parameters;
    raises ``WeightMismatch`` when the counts or any shape differ. ``what`` names the network's
    side in the count message."""
    if len(tensors) != len(program.use_order):
        raise WeightMismatch(
            f"the inference program has {len(program.use_order)} parameters, {what} {len(tensors)}")
    bad = [
        f"#{i}: program {p} {list(records[p].value.shape)} vs network {n} {list(t.shape)}"
        for i, (p, (n, t)) in enumerate(zip(program.use_order, tensors))
        if tuple(records[p].value.shape) != tuple(t.shape)
    ]
    if bad:
        raise WeightMismatch(f"{len(bad)} shape mismatches, first: " + "; ".join(bad[:5]))
    return [PairedTensor(p, n, t) for p, (n, t) in zip(program.use_order, tensors)]


def assign_paired(pairs: Sequence[PairedTensor], records: Mapping[str, TensorRecord]) -> None:
    """Copy the program's values into the paired tensors; every dtype is checked before any copy."""
    for pair in pairs:
        value = records[pair.program_name].value
        if np.dtype(value.dtype) != np.dtype(pair.tensor.numpy().dtype):
            raise WeightMismatch(
                f"{pair.network_name}: dtype {pair.tensor.dtype} vs {pair.program_name} {value.dtype}")
    for pair in pairs:
        pair.tensor.set_value(records[pair.program_name].value)


# --------------------------------------------------------------------------- export


def export_inference_folder(base_dir: Path, out_dir: Path, values: Mapping[str, np.ndarray],
                            overwrite: bool = False) -> Path:
    """Write ``values`` (program name → array, every parameter of the base program) into a copy of
    the registry folder ``base_dir`` at ``out_dir``.

    ``inference.pdmodel`` and ``inference.yml`` are copied unchanged; ``inference.pdiparams`` keeps
    the original names, order and tensor headers with the new values. The file is written to a
    temporary name, read back and compared, and only then put in place with the two copies.
    Unless ``overwrite``, ``out_dir`` must not hold an ``inference.pdiparams`` already
    (``FileExistsError``); ``out_dir`` is never ``base_dir`` (``ValueError``). Returns ``out_dir``.
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    target = out_dir / "inference.pdiparams"
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} exists")
    if out_dir.resolve() == base_dir.resolve():
        raise ValueError("an export writes a new folder; it never overwrites the base model")
    program, records = read_inference_params(base_dir)
    if set(values) != set(program.use_order):
        raise WeightMismatch("the values to export are not the base program's parameters")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".inference.", suffix=".pdiparams.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_params_file(tmp, program.file_order, records, values)
        reread = read_params_file(tmp, program.file_order)
        for name, value in values.items():
            if not np.array_equal(reread[name].value, value):
                raise WeightMismatch(f"{tmp}: {name} did not read back as written")
        for name in ("inference.pdmodel", "inference.yml"):
            shutil.copyfile(base_dir / name, out_dir / name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return out_dir


# --------------------------------------------------------------------------- reference runs


def run_program_as_written(model_dir: Path, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
    """A registry folder's inference program on an NCHW float32 batch, exactly as written: old IR,
    no IR optimization passes, plain CPU kernels (``threads``: CPU math threads, paddle's default
    when None). Returns the program's first output."""
    from paddle import inference

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    config = inference.Config(str(Path(model_dir) / "inference.pdmodel"), str(Path(model_dir) / "inference.pdiparams"))
    config.disable_gpu()
    config.enable_new_ir(False)
    config.switch_ir_optim(False)
    config.disable_glog_info()
    if threads is not None:
        config.set_cpu_math_library_num_threads(threads)
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

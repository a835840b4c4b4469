"""Thin wrapper around ``paddle.inference`` for the legacy ``.pdmodel`` graphs we serve.

The PP-OCR exports in the registry are old-IR programs. oneDNN on the new IR (PIR) fails on them
(``ConvertPirAttribute2RuntimeAttribute not support``), so predictors always run on the old IR.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")  # silence Paddle's C++ INFO logs before import
warnings.filterwarnings("ignore", message="No ccache found")  # only matters for C++ extensions

from paddle import inference  # noqa: E402


class ModelFilesMissing(FileNotFoundError):
    """A model folder lacks ``inference.pdmodel`` / ``inference.pdiparams``."""


def model_files(model_dir: Path) -> tuple[Path, Path]:
    """Return the (program, parameters) files of an inference model folder."""
    program = model_dir / "inference.pdmodel"
    params = model_dir / "inference.pdiparams"
    if not program.is_file() or not params.is_file():
        raise ModelFilesMissing(f"{model_dir} has no inference.pdmodel/inference.pdiparams")
    return program, params


class Predictor:
    """One single-input, first-output Paddle inference predictor on the CPU."""

    def __init__(self, model_dir: Path, threads: int = 2, use_mkldnn: bool = True) -> None:
        program, params = model_files(model_dir)
        config = inference.Config(str(program), str(params))
        config.disable_gpu()
        config.enable_new_ir(False)
        config.switch_ir_optim(True)
        config.enable_memory_optim()
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(threads)
        if use_mkldnn:
            config.enable_mkldnn()
            # Inputs vary in shape page to page; a bounded cache keeps oneDNN from growing forever.
            config.set_mkldnn_cache_capacity(16)
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an NCHW float32 batch and return its first output."""
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self._predictor.run()
        return self._output.copy_to_cpu()

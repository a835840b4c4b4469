"""Keep Paddle's noise out of Paperloop's output.

Paddle's import-time "No ccache found" warning is filtered once, in ``service/__init__.py``,
which every entry point imports before Paddle. What remains comes from exporting a model with
``paddle.jit.save``: Paddle 3.3's static graph (PIR) logs ``Paddle static graph(PIR) not support
input out tensor for now!!!!!`` from C++ (glog, straight to file descriptor 2) for ordinary tensor
operations such as ``a + b``, and warns from Python that PIR values have no ``place``. Neither is
about anything Paperloop could act on. :func:`quiet_export` drops exactly those around an export
and passes everything else through.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

PIR_OUT_TENSOR = "not support input out tensor for now"
PIR_PLACE = "Tensor do not have 'place' interface for pir graph mode"


@contextmanager
def filtered_native_stderr(noise: Sequence[str]) -> Iterator[None]:
    """Drop the lines containing any of ``noise`` that are written to file descriptor 2 inside the block.

    Native code (C++ logging) writes to the descriptor, not to ``sys.stderr``, so the descriptor is
    pointed at a temporary file for the duration and the lines that are not noise are written back
    to the real stderr afterwards, in order. Meant for short, single-purpose calls: other threads'
    stderr output in the meantime is held back until the block ends (never lost).
    """
    patterns = [n.encode() for n in noise]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if not any(p in line for p in patterns)]
            if kept:
                os.write(2, b"".join(kept))


@contextmanager
def quiet_export() -> Iterator[None]:
    """Around ``paddle.jit.save``: without PIR's out-tensor log line and its ``place`` warning."""
    with warnings.catch_warnings(), filtered_native_stderr([PIR_OUT_TENSOR]):
        warnings.filterwarnings("ignore", message=PIR_PLACE, category=UserWarning)
        yield

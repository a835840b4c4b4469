"""Paperloop: a document-processing service that gets better the more it is used."""

import warnings

__version__ = "0.1.0"

# Every entry point (the CLI, ``python -m service``, the review app, the tests, the benchmarks)
# imports this package before Paddle: keep Paddle's import-time advice about compiling C++
# extensions, which Paperloop never does, out of our output.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning,
                        module=r"paddle\.utils\.cpp_extension")

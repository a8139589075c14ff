"""The cpu backend: C kernels for the CPU (csrc/), built on first use (library.py), called through ctypes
(kernels.py for inference, train_kernels.py for the differentiable ones), registered with the dispatch in
backend.py. weight_blocks.py keeps column-blocked weight copies inside r1kit.ops.frozen_weights()."""
from r1kit.ops.cpu import backend  # noqa: F401  (registers the cpu implementations)

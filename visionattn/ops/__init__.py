"""Attention primitives: one file per op, each with a reference path and a fast path.

Every op is laid out the same way:

- ``<op>.py``: the public function ``<op>(..., impl="auto")``, ``IMPLS`` (its implementations,
  fastest first, ``"reference"`` among them), the readable reference, ``_triton_supports(...)``
  (whether the Triton kernels can run the given inputs) and ``example_inputs(device, dtype, **sizes)``
  (a typical call, shared by the tests and ``tools/benchmark.py``). :func:`.dispatch.pick` turns
  ``impl`` into the implementation that runs.
- ``_<op>_triton.py``: the Triton kernels and their ``torch.library.custom_op`` registrations
  (fake and autograd functions included), defined only when Triton is installed.
- ``_<op>_cuda.py`` (``depthwise_conv2d`` only): a CUDA C kernel compiled by NVRTC at first use, for
  inference where Triton cannot express the fast kernel; ``available()`` says whether it compiles here.
- ``_triton.py``: what the kernels share: the guarded ``triton`` import, :func:`._triton.triton_available`,
  :func:`._triton.interpreting` (``TRITON_INTERPRET=1`` runs the kernels on CPU tensors) and
  :func:`._triton.can_run`, the device and dtype part of every ``_triton_supports``.
"""

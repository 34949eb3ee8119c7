"""The Triton kernels and launchers of seer_kernels' ops, one module per op
(`seer_kernels.triton.<op>`) and the helpers they share (`_common`).

Nothing here registers an op: the modules import only torch, triton and side-effect-free
helpers, and each launcher is a plain function, tensors in and tensors out, so kernels and
helpers can be reused by other ops. The ops `seer_kernels::<k>_triton` are registered from
these launchers by seer_kernels/_library.py (one per schema op k of the op's declaration).
Import these modules only where triton is installed.
"""

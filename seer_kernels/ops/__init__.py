"""One module per op, each in the same order: the op's contract (docstring), its
registration through seer_kernels/_library.py (fake kernels, autograd, the Triton ops),
then its public wrapper (argument checks, backend resolution, `_library.run`). The
package exports the wrappers (`seer_kernels.sinkhorn`, ...); the kernels are
csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu and seer_kernels/triton/<op>.py."""

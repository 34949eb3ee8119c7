"""Build seer_kernels._C: CPU kernels always, CUDA kernels when a toolkit is found.

Environment:
  SEER_KERNELS_CUDA=1|0   force / skip the CUDA sources (default: build them when
                          torch is a CUDA build and nvcc is found).
  TORCH_CUDA_ARCH_LIST    honoured; defaults to "8.0;9.0" when no GPU is visible.
  MAX_JOBS                honoured by torch's ninja build.
  CUDA_HOME               the toolkit; found from nvcc on PATH when unset.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> Path | None:
    """The CUDA toolkit folder. nvcc on PATH may be a wrapper script whose parent
    is not the toolkit (then torch's own guess fails to link cudart): look beside
    it for the standard `cuda` folder, and through symlinks."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates += [str(real.parent.parent), str(Path(nvcc).parent.parent / "cuda")]
        # A wrapper script that execs the real compiler names the toolkit inside.
        try:
            text = Path(nvcc).read_text(errors="ignore")[:4096]
            for word in text.split():
                if word.endswith("/bin/nvcc") and word.startswith("/"):
                    candidates.append(str(Path(word.strip("\"'")).parent.parent))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and _is_toolkit(Path(c)):
            return Path(c).resolve()
    return None


def want_cuda(cuda_home: Path | None) -> bool:
    flag = os.environ.get("SEER_KERNELS_CUDA", "").strip()
    if flag == "0":
        return False
    import torch

    has = torch.version.cuda is not None and cuda_home is not None
    if flag == "1" and not has:
        raise RuntimeError(
            "SEER_KERNELS_CUDA=1 but no CUDA build is possible: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA toolkit={cuda_home}"
        )
    return has


def nvidia_pip_includes() -> list[str]:
    """cuBLAS/cuSPARSE headers that torch's CUDA headers include ship in the pip
    `nvidia` packages (nvidia/cu13/include, or nvidia/<lib>/include on older torch)."""
    dirs: list[str] = []
    for site in sys.path:
        base = Path(site) / "nvidia"
        if base.is_dir():
            dirs += sorted(str(p) for p in base.glob("*/include") if p.is_dir())
    return list(dict.fromkeys(dirs))


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home is not None:
        # Must be set before torch.utils.cpp_extension is imported: it reads it once.
        os.environ["CUDA_HOME"] = str(cuda_home)
    use_cuda = want_cuda(cuda_home)

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-DSEER_KERNELS_BUILD"]
    define_macros = []
    if not use_cuda:
        return [
            CppExtension(
                "seer_kernels._C",
                sources,
                extra_compile_args={"cxx": cxx},
                extra_link_args=["-fopenmp"],
                define_macros=define_macros,
            )
        ]

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros += [("SEER_KERNELS_WITH_CUDA", "1")]
    cxx += [f'-DSEER_KERNELS_CUDA_ARCHS="{archs}"']
    nvcc = [
        "-O3",
        "--use_fast_math",
        "-lineinfo",
        f'-DSEER_KERNELS_CUDA_ARCHS="{archs}"',
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ]
    return [
        CUDAExtension(
            "seer_kernels._C",
            sources,
            include_dirs=nvidia_pip_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
            define_macros=define_macros,
        )
    ]


def build_ext_cls():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    packages=find_packages(include=["seer_kernels", "seer_kernels.*", "seer", "seer.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_cls()},
)

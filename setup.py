"""The optional C kernels (dcframe_plugins._ckernels, issue 13); pyproject.toml holds every other setting.

`optional=True`: where no compiler works, the build says so and the package installs without them (the stages then
run numba's kernels or numpy, with the same bytes). Set DCFRAME_REQUIRE_CKERNELS=1 to make a failed build an error.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """gcc/clang flags where the compiler takes them (C99, -O3, products and sums rounded one by one as numpy rounds
    them, libm for floor)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                ext.extra_compile_args = ["-std=c99", "-O3", "-ffp-contract=off"]  # no fused multiply-add: numpy's bits
                ext.libraries = ["m"]
        super().build_extensions()


KERNELS = Extension("dcframe_plugins._ckernels", ["plugins/_ckernels.c"],
                    optional=os.environ.get("DCFRAME_REQUIRE_CKERNELS", "") != "1")

setup(ext_modules=[KERNELS], cmdclass={"build_ext": BuildExt})

"""Build hook: compile the inbox contract with vyper whenever the package is built or installed.

Everything else about the package lives in pyproject.toml. `build_inbox` is a sub-command of
`build`, so it runs for wheels (writing into build_lib) and for `pip install -e .` (writing next
to the source, where the editable install imports from). The artifact is generated, never edited
and not committed; see src/umbra/ordering/evm_build.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
ORDERING = ROOT / "src" / "umbra" / "ordering"


def _evm_build() -> Any:
    # Loaded by path: the build environment has vyper but not umbra's own dependencies.
    spec = importlib.util.spec_from_file_location("_umbra_evm_build", ORDERING / "evm_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_inbox(Command):  # setuptools command names are lower case
    description = "compile contracts/Inbox.vy with vyper into the package's inbox artifact"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _target(self) -> Path:
        name = _evm_build().ARTIFACT_NAME
        if self.editable_mode or self.build_lib is None:
            return ORDERING / name
        return Path(self.build_lib) / "umbra" / "ordering" / name

    def run(self) -> None:
        module = _evm_build()
        out = module.write_artifact(ORDERING / module.SOURCE_NAME, self._target())
        print(f"compiled the inbox contract into {out}")

    def get_outputs(self) -> list[str]:
        return [] if self.editable_mode else [str(self._target())]

    def get_output_mapping(self) -> dict[str, str]:
        return {}

    def get_source_files(self) -> list[str]:
        # sdist wants paths relative to this file, /-separated.
        return ["src/umbra/ordering/contracts/Inbox.vy", "src/umbra/ordering/evm_build.py"]


build.sub_commands = [*build.sub_commands, ("build_inbox", None)]

setup(cmdclass={"build_inbox": build_inbox})

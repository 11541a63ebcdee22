"""Packaging hook (the metadata is in setup.cfg): the wheel ships the repository's configs/ and
model_zoo/ inside the package as visionattn/.mim/, the layout OpenMMLab packages use.

An editable install (pip install -e .) copies nothing: visionattn.resources finds the folders at
the top of the checkout.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_DIRS = ("configs", "model_zoo")


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DATA_DIRS:
            target = Path(self.build_lib) / "visionattn" / ".mim" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})

"""Maps the top-level stage folders onto one import namespace: runtime/ -> edgeseg.runtime, and so on.

pyproject.toml holds the metadata; this file only exists because the package list is computed from the folders.
"""

from setuptools import find_packages, setup

STAGES = ("runtime", "training", "export")

packages = ["edgeseg", *(f"edgeseg.{stage}" for stage in STAGES)]
packages += [f"edgeseg.{stage}.{sub}" for stage in STAGES for sub in find_packages(stage)]
package_dir = {"edgeseg": "edgeseg", **{f"edgeseg.{stage}": stage for stage in STAGES}}

setup(packages=packages, package_dir=package_dir)

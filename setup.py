"""The wheel's layout: the source folders `trainer/`, `data_mixers/` and `configs/` install as `synthmix.trainer`,
`synthmix.data_mixers` and `synthmix.configs`, so synthmix owns one top-level import name (`trainer` is also the
top-level package of Coqui's `trainer`). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

MAPPED = {"synthmix.trainer": "trainer", "synthmix.data_mixers": "data_mixers", "synthmix.configs": "configs"}

packages = find_packages(include=["synthmix", "synthmix.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(
    packages=packages,
    package_dir={"synthmix": "synthmix", **MAPPED},
    package_data={"synthmix.configs": ["*.yaml", "accelerate/*.yaml"]},
)

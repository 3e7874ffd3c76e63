"""Packaging of skcrnn: dependency ranges here, exact pins in requirements/."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = next(line.split('"')[1] for line in
               (HERE / "skcrnn" / "_version.py").read_text().splitlines()
               if line.startswith("__version__"))

setup(
    name="skcrnn",
    version=VERSION,
    description="Collaborative recurrent neural network recommenders for "
                "scikit-learn (Ko, Maystre & Grossglauser, ACML 2016).",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["skcrnn", "skcrnn.*"]),
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
        "scikit-learn>=1.4",
        "torch>=2.1",
        "hmmlearn>=0.3",
        "implicit>=0.7",
        "threadpoolctl>=3.1",
        "joblib>=1.3",
        "tqdm>=4.60",
        "matplotlib>=3.6",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6"],
        "docs": ["sphinx>=7", "numpydoc>=1.6", "sphinx-gallery>=0.15"],
    },
    entry_points={"console_scripts": ["skcrnn=skcrnn.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

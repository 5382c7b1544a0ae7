from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
requirements = [
    line.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="mobilecv",
    version="0.1.0",
    description="The convolutional-network canon as small, fast, measured TFLite models",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mobilecv", "mobilecv.*", "converters"]) + ["mobilecv.recipes"],
    package_dir={"mobilecv.recipes": "recipes"},
    package_data={
        "mobilecv": ["zoo.json", "bench/devices/*.yaml"],
        "mobilecv.recipes": ["*.yaml"],
    },
    install_requires=requirements,
    entry_points={"console_scripts": ["mobilecv=mobilecv.cli:main"]},
)

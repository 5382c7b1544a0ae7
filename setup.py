import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def compatible(line: str) -> str:
    """requirements.txt pins exact versions for our CI; installed as a library, mobilecv
    asks for compatible releases instead (==X.Y.Z -> ~=X.Y.Z allows X.Y.*), so it does not
    force its pins on another project's environment."""
    name, sep, version = line.partition("==")
    if not sep:
        return line
    if not re.fullmatch(r"\d+(\.\d+)+", version):  # e.g. a dev build: any release from it on
        return f"{name}>={version}"
    return f"{name}~={version}"


requirements = [
    compatible(line.strip())
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="mobilecv",
    version="0.1.0",
    description="The convolutional-network canon as small, fast, measured TFLite models",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # enum.StrEnum is 3.11+.
    python_requires=">=3.11",
    # The top-level folders recipes/ and converters/ install inside the mobilecv package,
    # so that installing mobilecv adds no generic top-level module name.
    packages=find_packages(include=["mobilecv", "mobilecv.*"])
    + ["mobilecv.recipes", "mobilecv.converters"],
    package_dir={"mobilecv.recipes": "recipes", "mobilecv.converters": "converters"},
    package_data={
        "mobilecv": ["zoo.json", "bench/devices/*.yaml"],
        "mobilecv.recipes": ["*.yaml"],
    },
    install_requires=requirements,
    entry_points={"console_scripts": ["mobilecv=mobilecv.cli:main"]},
)

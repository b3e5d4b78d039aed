#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels that `train.sh` installs on a GPU machine with
# JAX but without TensorFlow or internet (CPython 3.12, x86-64 Linux by default).
#
#   training/gpu/wheels.sh DIR [PYTHON_VERSION]
#
# Only what `lacuna-train train` imports and such an image lacks: Keras and its small
# dependencies, nilearn and nibabel (the MNI152 tissue maps), pydicom, highdicom and the
# pylibjpeg decoders (the realistic generator writes and reads each subject as DICOM). NumPy,
# SciPy, scikit-image, h5py, ml-dtypes, absl-py, rich, pandas, scikit-learn, Pillow and JAX are
# expected there already. The versions are this checkout's: pyproject.toml's pins, and Keras
# as installed in .venv when there is one.
set -euo pipefail
dir=${1:?usage: wheels.sh DIR [PYTHON_VERSION]}
python_version=${2:-3.12}
here=$(cd "$(dirname "$0")/../.." && pwd)
keras_version=$("$here/.venv/bin/python" -c 'import keras; print(keras.__version__)' 2>/dev/null || true)
# pyproject.toml's requirement for each of these, so that the pins are written once.
mapfile -t pinned < <(python3 - "$here/pyproject.toml" nilearn pydicom highdicom pylibjpeg \
    pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle <<'PYTHON'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["training"]
for name in sys.argv[2:]:
    print(next(r for r in requirements if re.match(rf"{re.escape(name)}\b(?!-)", r)))
PYTHON
)
packages=(
  "keras${keras_version:+==$keras_version}" optree namex nibabel importlib-resources pyjpegls
  "${pinned[@]}"
)
platforms=()
for n in 17 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$python_version" --platform manylinux2014_x86_64 "${platforms[@]}" \
  -d "$dir" "${packages[@]}"
ls "$dir"

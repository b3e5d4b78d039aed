# Lacuna: set-up, run, demo and tests on Debian 12 (as root) or any machine with dcmtk,
# dicom3tools and Python 3.11. Every target sets up what it needs first.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
APT_PACKAGES := dcmtk dicom3tools libgdcm-tools orthanc orthanc-dicomweb openssl
LACUNA_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export LACUNA_TEST_POSTGRES_URL
# Test processes (pytest-xdist), each taking whole files: most tests wait on DICOM peers,
# subprocesses and the queue, so two share two cores well.
TEST_PROCESSES ?= 2
PYTEST := $(VENV)/bin/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

.PHONY: setup system-deps serve demo test test-all lint

setup: system-deps $(STAMP)

# DICOM peers and validators from Debian: dcmtk (storescu/storescp/echoscu, compressors),
# dicom3tools (dciodvfy), GDCM (gdcmconv: JPEG 2000), Orthanc (a real PACS for the tests).
system-deps:
	@if ! command -v storescp >/dev/null || ! command -v dciodvfy >/dev/null \
	    || ! command -v gdcmconv >/dev/null || ! command -v Orthanc >/dev/null \
	    || ! command -v openssl >/dev/null \
	    || ! $(PYTHON) -c "import ensurepip" 2>/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(APT_PACKAGES) python3-venv >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: setup
	$(VENV)/bin/lacuna serve

demo: setup
	$(VENV)/bin/lacuna demo

test: setup
	$(PYTEST)

# Also the slow tests; the GPU training path's needs JAX (the jax extra).
test-all: setup
	$(VENV)/bin/pip install -q -e '.[dev,jax]'
	$(PYTEST) -m ''

# ruff; mypy strict on node/ and models/; the import contracts of pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check node models training tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# mobilecv: `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
DEMO_OUT ?= demo-out

.PHONY: install data test test-slow demo lint format zoo clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

# Fashion-MNIST ships in Debian's dataset-fashion-mnist; install it where we can.
# The real assets of the scenes and week-3 tasks (OpenCV's digits.png, ViSP's AprilTag and
# Solvay photos, stardist's nuclei): only the files used, taken from the .deb archives and
# the wheel into ~/.cache/mobilecv/assets (mobilecv/data/assets.py says why).
data:
	@if [ -d $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST steps will fail"; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST steps will fail"; \
	else echo "warning: install Debian's dataset-fashion-mnist for Fashion-MNIST"; fi
	@$(PY) -c 'import sys; from mobilecv.data.assets import main; sys.exit(main(["install"]))' \
	  || echo "warning: scene assets missing (opencv-doc, visp-images-data, stardist files); scenes and asset loaders will fail"

# Two pytest workers (pytest-xdist), a test file each at a time: module fixtures are built
# once, and on 2 cores the suite takes about 13 minutes instead of 20.
test: install
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile

# Full-size builds and training; CI runs these too (.ci/run). One process per test
# file (the TFLite converter has segfaulted after many conversions in one process), two
# files at a time: scripts/run_slow_tests.py says why.
test-slow: install
	$(PY) scripts/run_slow_tests.py

demo: install
	$(PY) scripts/demo.py --out $(DEMO_OUT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate mobilecv/zoo.json and the README model-zoo table from real builds.
zoo: install
	$(PY) scripts/gen_zoo.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache *.egg-info

# Every target sets itself up on a fresh machine: the first run creates .venv.
# torch is installed first, pinned to 2.13.0 (a CPU wheel pip finds on the CI machines);
# installing the project first would let pip pick a multi-GB CUDA build instead.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# ipywidgets 7.7 is what Colab ships; the widget tests also run against it, from a side directory
# put in front of the 8.x install on PYTHONPATH.
IPYW7 := $(VENV)/ipywidgets7
IPYW7_STAMP := $(IPYW7)/.installed

# Google Colab's preinstalled stack (ci/colab-constraints.txt) in a venv of its own, for `make test-colab`.
COLAB_VENV := $(VENV)/colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_STAMP := $(COLAB_VENV)/.installed
COLAB_PINS := ci/colab-constraints.txt
# `make lab`'s port, and arguments added to its command line (the tests pass --no-browser).
LAB_PORT ?= 8888
LAB_ARGS ?=
# Where `make demo` writes demo.wav and its JSON sidecar.
DEMO_DIR ?= out

# Tests and notebooks run torch with one intra-op thread: the models under test are tiny, a second thread
# only adds waiting, and the numbers the notebooks print (compared by nbval) depend on the thread count.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: setup test test-unit test-widgets7 test-notebooks test-colab lint notebooks lab demo bench default-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(IPYW7_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(IPYW7) \
		'ipywidgets==7.7.5' 'widgetsnbextension==3.6.10' 'jupyterlab-widgets==1.1.11' 'ipython-genutils==0.2.0'
	touch $@

# Colab's environment: its packages as pinned, torch 2.13.0 CPU in place of its CUDA build (see $(COLAB_PINS)).
# Then pip's plan for installing distill_nb as a Colab user does (no constraints) must only add packages, and
# the test tools go in under the pins.
$(COLAB_STAMP): pyproject.toml $(COLAB_PINS) ci/colab_plan.py
	rm -rf $(COLAB_VENV)
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_PY) -m pip install --quiet -c $(COLAB_PINS) pip
	$(COLAB_PY) -m pip install --quiet torch==2.13.0
	$(COLAB_PY) -m pip install --quiet -r $(COLAB_PINS)
	$(COLAB_PY) -m pip install --quiet --dry-run --report $(COLAB_VENV)/plan.json -e '.[notebooks]'
	$(COLAB_PY) ci/colab_plan.py plan $(COLAB_VENV)/plan.json $(COLAB_PINS)
	$(COLAB_PY) -m pip install --quiet -e '.[notebooks]'
	$(COLAB_PY) -m pip install --quiet -c $(COLAB_PINS) -e '.[test]'
	touch $@

setup: $(STAMP)

test: test-unit test-widgets7 test-notebooks test-colab

test-unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests -q

test-widgets7: $(IPYW7_STAMP)
	$(TEST_ENV) EXPECTED_IPYWIDGETS_MAJOR=7 PYTHONPATH=$(IPYW7) $(PY) -m pytest tests/test_widgets.py -q -p no:cacheprovider

test-notebooks: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest --nbval notebooks --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
		-q -p no:cacheprovider

# The quickstart notebook and the widget tests on Colab's versions of IPython, ipywidgets, traitlets, ipykernel,
# numpy... ipykernel 6.17's debugpy warns at every kernel start on Python 3.11 unless told not to validate its files.
COLAB_ENV := $(TEST_ENV) PYDEVD_DISABLE_FILE_VALIDATION=1
test-colab: $(COLAB_STAMP)
	$(COLAB_PY) ci/colab_plan.py check $(COLAB_PINS)
	$(COLAB_ENV) $(COLAB_PY) -m pytest --nbval notebooks/01_quickstart.ipynb --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg -q -p no:cacheprovider
	$(COLAB_ENV) EXPECTED_IPYWIDGETS_MAJOR=7 $(COLAB_PY) -m pytest tests/test_widgets.py -q -p no:cacheprovider

# ruff with the rules and line length in pyproject.toml, over the package, tests, benches and notebooks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Re-execute the notebooks after a change that moves what they print (e.g. a retrained default model).
# NOTEBOOKS picks others (the README test runs the target on a throwaway notebook).
NOTEBOOKS ?= notebooks/0*.ipynb
notebooks: $(STAMP)
	$(TEST_ENV) $(PY) notebooks/execute.py $(NOTEBOOKS)

# The quickstart is the lab's default URL: the address it prints, the browser it opens and `/` all lead to it.
# (A file argument would be resolved against the current folder, not --notebook-dir, and reach only the browser.)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--notebook-dir notebooks --LabApp.default_url=/lab/tree/01_quickstart.ipynb $(LAB_ARGS)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(PY) -m distill_nb generate --duration 10 --seed 1234 -o $(DEMO_DIR)/demo.wav

bench: $(STAMP)
	$(PY) bench/audio_bench.py
	$(PY) bench/sampling_bench.py
	$(PY) bench/inversion_bench.py
	$(PY) bench/seam_bench.py
	$(PY) bench/model_quality.py

default-model: $(STAMP)
	$(PY) -m distill_nb train-default

clean:
	rm -rf $(VENV) .pytest_cache out

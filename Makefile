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

# Tests and notebooks run torch with one intra-op thread: the models under test are tiny, a second thread
# only adds waiting, and the numbers the notebooks print (compared by nbval) depend on the thread count.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: test test-unit test-widgets7 test-notebooks lint notebooks lab demo bench default-model clean

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

test: test-unit test-widgets7 test-notebooks

test-unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests -q

test-widgets7: $(IPYW7_STAMP)
	$(TEST_ENV) PYTHONPATH=$(IPYW7) $(PY) -m pytest tests/test_widgets.py -q -p no:cacheprovider

test-notebooks: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest --nbval notebooks --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
		-q -p no:cacheprovider

# ruff with the rules and line length in pyproject.toml, over the package, tests, benches and notebooks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Re-execute the notebooks after a change that moves what they print (e.g. a retrained default model).
notebooks: $(STAMP)
	$(TEST_ENV) $(PY) notebooks/execute.py notebooks/0*.ipynb

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,) --notebook-dir notebooks $(if $(wildcard notebooks/01_quickstart.ipynb),01_quickstart.ipynb,)

demo: $(STAMP)
	mkdir -p out
	$(PY) -m distill_nb generate --duration 10 --seed 1234 -o out/demo.wav

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

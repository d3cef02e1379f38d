# capirelay — every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck soak bench bench-ingest clean golden

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

## The main job: gateway + local Graph API emulator + demo shop (SQLite).
run: $(STAMP)
	$(BIN)/capirelay demo

## The whole test suite (fast, deterministic part), plus lint and type checks.
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## Long-running reliability suite (crash loops, soak).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow

bench: $(STAMP)
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build dist

## Ingest under wrk, side by side with the bare-Starlette floor (ratios); ~2 min.
## BENCH_INGEST_ARGS="--workers 1,2 --duration 10" to compare worker counts,
## "--workers 2 --cpu-affinity off --cpu-affinity auto --repeat 3" workers kept on a core.
bench-ingest: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk
	$(BIN)/python bench/ingest_wrk.py $(BENCH_INGEST_ARGS)

# Rewrite tests/sources/golden/*.out.json from the current code; review the diff after.
golden: $(STAMP)
	$(BIN)/python tests/sources/test_mapping_golden.py

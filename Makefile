# Two set-up commands (see README): `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
EXAMPLE := examples/sklearn-logreg
OUT := out

.PHONY: setup demo test lint bench

setup:
	./scripts/setup.sh

demo: setup
	$(BIN)/mlflow-steps hash $(EXAMPLE) --explain
	rm -rf $(OUT)/context
	$(BIN)/mlflow-steps render $(EXAMPLE) -o $(OUT)/context

test: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench scripts

bench: setup
	$(BIN)/python bench/hash_bench.py

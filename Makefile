# One command for every check: `make check` (lint, types, tests).
PY ?= python
TYPECHECK := build/typecheck

.PHONY: check lint typecheck test bench

check: lint typecheck test

lint:
	ruff check actors api persistence loadtest tests
	ruff format --check actors api persistence loadtest tests
	lint-imports

# mypy cannot follow setuptools' package-dir mapping (actors/ -> omnigrid.actors),
# so it reads the packages through a tree of symlinks with their installed names.
typecheck:
	mkdir -p $(TYPECHECK)/omnigrid
	for d in actors api persistence; do ln -sfn ../../../$$d $(TYPECHECK)/omnigrid/$$d; done
	MYPYPATH=$(TYPECHECK) mypy -p omnigrid.actors -p omnigrid.api -p omnigrid.persistence
	MYPYPATH=$(TYPECHECK) mypy tests loadtest

test:
	$(PY) -m pytest

bench:
	$(PY) loadtest/bench.py

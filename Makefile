PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo examples test lint format proto certs bench clean

$(BIN)/workflowd: setup.cfg pyproject.toml tests/plugins/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e tests/plugins  # test.count: a plugin the tests can count
	touch $@

install: $(BIN)/workflowd  ## virtual environment with the package and its test tools

demo: install  ## the main job: two agents hash two real trees, the coordinator compares them
	PATH=$(abspath $(BIN)):$$PATH bash examples/provenance-demo.sh

examples: install  ## the live examples: DH identification and a rolling deployment
	PATH=$(abspath $(BIN)):$$PATH bash examples/live-demo.sh

test: install  ## the whole test suite
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: install  ## regenerate workflowd/rpc from proto/
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \
		--grpc_python_out=. proto/workflowd/rpc/workflow.proto

CERTS ?= certs
certs: install  ## a CA, a coordinator on localhost, agents host-a and host-b, an operator, in $(CERTS)/
	$(BIN)/workflowctl certs init $(CERTS)
	$(BIN)/workflowctl certs issue $(CERTS) coordinator localhost
	$(BIN)/workflowctl certs issue $(CERTS) agent host-a
	$(BIN)/workflowctl certs issue $(CERTS) agent host-b
	$(BIN)/workflowctl certs issue $(CERTS) operator operator

bench: install  ## the benchmark suite (about 3 minutes): prints a table, writes bench/results/
	$(BIN)/pip install --quiet -e '.[bench]' || echo "bench: the Celery peer baseline needs celery and redis; it will be skipped"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

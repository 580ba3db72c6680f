# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
# With DATABASE_URL / REDIS_URL unset, both start the embedded Postgres and Redis (see README).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
# The suite runs as two streams of modules (pytest-xdist; a module's tests stay in one stream):
# most of its time is processes starting and waiting, which two streams overlap (tests/support.py).
TEST_STREAMS ?= 2

.PHONY: run test unit lint services stop clean cluster

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/python scripts/devstack.py run

test: $(STAMP)
	$(BIN)/ruff check .
	scripts/ensure-packages.sh
	$(BIN)/python scripts/llama.py build
	$(BIN)/python scripts/devstack.py test -n $(TEST_STREAMS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The fast in-process tier alone (tests/unit: no gunicorn, no Celery worker), for the edit-test loop.
unit: $(STAMP)
	$(BIN)/python scripts/devstack.py test tests/unit

cluster: $(STAMP)
	scripts/ensure-packages.sh nginx
	$(BIN)/python scripts/cluster.py

lint: $(STAMP)
	$(BIN)/ruff check .

services: $(STAMP)
	$(BIN)/python scripts/devstack.py up

stop:
	$(BIN)/python scripts/devstack.py down

clean: stop
	rm -rf $(VENV) .data

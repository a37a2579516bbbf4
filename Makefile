# Developer tasks. `make up` runs everything on the embedded defaults; `make test` runs the checks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)

.PHONY: up stack load test lint typecheck pytest bench venv clean redis

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .    # the `aihub` command
	touch $@

venv: $(BIN)/.installed

redis:
	@[ -n "$$REDIS_URL" ] || scripts/ensure-redis

up: venv redis
	$(BIN)/python -m gateway up

# the roles as separate processes: AIHUB_PROXIES proxies (SO_REUSEPORT) on AIHUB_PORT, worker + API on AIHUB_API_PORT
stack: venv redis
	$(BIN)/python -m gateway.multi

# locust against a `make stack` it starts and stops itself; report in benchmarks/results/
LOAD_SECONDS ?= 60
LOAD_USERS ?= 20
LOAD_SPAWN_RATE ?= 5
load: venv
	@scripts/ensure-redis
	$(BIN)/python -m benchmarks.load --seconds $(LOAD_SECONDS) --users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE)

lint: venv
	$(BIN)/ruff check gateway api billing billing_worker fakes tests benchmarks

typecheck: venv
	$(BIN)/mypy gateway api billing billing_worker fakes

pytest: venv
	@scripts/ensure-redis
	@scripts/ensure-postgres
	@scripts/ensure-fonts
	@scripts/ensure-chromium
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: venv
	$(BIN)/python -m pytest benchmarks -m benchmark -q -s -p no:randomly

clean:
	rm -rf .var .benchmarks

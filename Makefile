# Airlock: `make demo` (the whole upgrade on the embedded default) and `make test`.
# Both install what they need, idempotently: Debian packages, then .venv from requirements.txt.

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.airlock-installed
TOOL_PKGS := mariadb-client mydumper postgresql-client-15 zstd
# ^ the tools Airlock's tasks call: the Dockerfile installs the same (tests/test_compose.py checks it)
DEB_PKGS  := default-libmysqlclient-dev pkg-config redis-server $(TOOL_PKGS)
APT       := apt-get -o DPkg::Lock::Timeout=300 -y -qq

.PHONY: demo test lint deps system-deps clean

demo: deps
	$(PY) -m airlock.demo.run

test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=30

lint: deps
	$(VENV)/bin/ruff check include dags tests bench

deps: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO $(APT) install $$missing >/dev/null; \
	fi

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) build include/*.egg-info

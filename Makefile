# Airlock: `make demo` (the whole upgrade on the embedded default) and `make test`.
# Both install what they need, idempotently: Debian packages, then .venv from requirements.txt.

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.airlock-installed
TOOL_PKGS := mariadb-client mydumper postgresql-client-15 zstd
# ^ the tools Airlock's tasks call: the Dockerfile installs the same (tests/test_compose.py checks it)
DEB_PKGS  := default-libmysqlclient-dev pkg-config redis-server $(TOOL_PKGS)
BROWSER_PKGS := chromium
APT       := apt-get -o DPkg::Lock::Timeout=300 -y -qq
SHELL     := /bin/bash

.PHONY: demo test lint deps system-deps browser-deps services clean

demo: deps
	$(PY) -m airlock.demo.run

# Four pytest sessions at once, each one test at a time, since most of a test's time is waiting on
# servers: the distributed Airflow's module (then pip's resolutions against the package index and
# the artifact stores' upgrade), Helm on a kube-apiserver (then Sematic and the demo), the other long
# end-to-end modules (drain decisions, schedules and windows, ZenML, transient faults, re-runs), and
# the rest. Grouped so that each takes about as long (measured on 2026-11-28, night: distributed 34.0,
# helm 33.6, waiting 35.9 and the rest 37.3 min; 39.1 min in all). The first
# three write to .test-<name>.log, printed after the rest's output; then every session's failures in
# one list, so the end of CI's output says what failed even when its start is cut. A session still
# running after SESSION_MINUTES is interrupted (pytest then prints where each test stood), so that a
# hang ends in a report inside CI's 90 minutes instead of a cut-off log. Any session failing (or
# collecting nothing) fails the target.
SESSION_distributed := tests/test_distributed.py tests/test_resolution.py tests/test_artifact_store.py
SESSION_helm        := tests/test_upgrade_helm.py tests/test_upgrade_sematic.py tests/test_demo.py
SESSION_waiting     := tests/test_drain_decision.py tests/test_operations.py tests/test_upgrade_zenml.py \
                       tests/test_transient_blips.py tests/test_reruns.py
BESIDE          := distributed helm waiting
SESSION_MINUTES ?= 75
PYTEST          := timeout --foreground -s INT -k 60 $(SESSION_MINUTES)m $(PY) -m pytest -q -p no:cacheprovider --durations=20

# Compiled once up front: where PYTHONDONTWRITEBYTECODE is set (as on these machines), every process
# that imports Airlock (each task of the distributed Airflow, each DAG parse) would compile it again.
test: deps browser-deps lint services
	@$(PY) -m compileall -q include dags plugins tests >/dev/null
	@$(foreach s,$(BESIDE),$(PYTEST) $(SESSION_$(s)) > .test-$(s).log 2>&1 & echo $$! > .test-$(s).pid;) \
	$(PYTEST) tests $(addprefix --ignore=,$(foreach s,$(BESIDE),$(SESSION_$(s)))) 2>&1 | tee .test-rest.log; \
	codes="rest=$${PIPESTATUS[0]}"; \
	for s in $(BESIDE); do \
	  wait $$(cat .test-$$s.pid); codes="$$codes $$s=$$?"; \
	  echo "--- run beside the rest: $$s ---"; cat .test-$$s.log; \
	done; \
	echo "--- failures of all sessions ---"; \
	grep -h -E "^(FAILED|ERROR) " .test-rest.log $(foreach s,$(BESIDE),.test-$(s).log) || echo "none"; \
	echo "exit codes: $$codes (124: stopped after $(SESSION_MINUTES) min)"; \
	case " $$codes " in *=[1-9]*) exit 1;; esac

lint: deps
	$(VENV)/bin/ruff check include dags plugins tests bench

deps: system-deps $(STAMP)

# Installs the Debian packages named in $(1) that are missing (sudo when not root).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO $(APT) install $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt_install,$(DEB_PKGS))

# The Upgrades page's browser test (tests/test_distributed.py) runs Debian's chromium headless.
browser-deps:
	$(call apt_install,$(BROWSER_PKGS))

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The machine's own MariaDB (127.0.0.1:3306) and PostgreSQL (127.0.0.1:5432), which the tests share:
# started when they are down (a machine restarted without them), then waited for; one that runs but
# does not answer is reported, never killed.
services:
	@if ! pgrep -x mariadbd >/dev/null; then \
	  echo "MariaDB is not running: starting it"; \
	  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
	fi; \
	if ! pgrep -f 'postgres -D' >/dev/null; then \
	  echo "PostgreSQL is not running: starting it"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	fi; \
	for i in $$(seq 60); do \
	  mariadb-admin -h 127.0.0.1 -u root --connect-timeout=2 ping >/dev/null 2>&1 \
	    && pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; \
	  sleep 1; \
	done; \
	echo "MariaDB (127.0.0.1:3306, root) or PostgreSQL (127.0.0.1:5432) does not answer after 60 s:" \
	  "see /var/log/mysql/error.log and /var/log/postgresql/; the tests need both"; exit 1

clean:
	rm -rf $(VENV) build include/*.egg-info

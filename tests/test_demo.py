"""`make demo APPROVE=ui KEEP=1` as a person takes part in it: the demo prints one line per phase, hands
the approval gate to them (its link and login), they click Approve in Airflow's UI in a real browser,
the upgrade finishes, the demo prints where the Upgrades page is and keeps Airflow and both servers
up until Ctrl-C, which stops them all."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
from airlock.drivers.process import port_open
from browser import browser_page, log_in
from conftest import platform_venvs

REPO = Path(__file__).resolve().parent.parent
STAGING, PRODUCTION, AIRFLOW = 5299, 5300, 5301
PHASE_LINE = re.compile(r"\] phase (\w+) complete$")


class StallingAirflow(http.server.BaseHTTPRequestHandler):
    """Airflow's API as the demo follows a run, busy for a moment: it drops the first poll of the
    task instances without an answer (as a request that timed out), then answers 503 once."""

    polls: ClassVar[list[str]] = []

    def do_POST(self) -> None:  # /auth/token
        self.answer(200, {"access_token": "token"})

    def do_GET(self) -> None:
        StallingAirflow.polls.append(self.path)
        if self.path.endswith("/taskInstances?limit=100") and len(StallingAirflow.polls) == 1:
            self.close_connection = True  # no answer at all
            return
        if len(StallingAirflow.polls) == 2:
            self.answer(503, {"detail": "busy"})
        elif self.path.endswith("/taskInstances?limit=100"):
            self.answer(200, {"task_instances": [{"task_id": "conclude.report", "state": "success"}]})
        else:
            self.answer(200, {"state": "success"})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_the_demo_follows_its_run_through_an_api_that_stalls_for_a_moment(tmp_path, capsys):
    """Under load Airflow's API once left a poll unanswered for 30 s: the demo ended there and stopped
    everything it started. It asks again instead, and says so."""
    from airlock.demo.run import PASSWORDS_FILE, AirflowApi, follow_run

    (tmp_path / PASSWORDS_FILE).write_text(json.dumps({"admin": "pw"}))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StallingAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = AirflowApi(tmp_path, port=server.server_address[1])
        assert follow_run(api, "manual__1") == "success"
    finally:
        server.shutdown()
    said = capsys.readouterr().out
    assert said.count("Airflow's API did not answer") == 2 and "conclude.report: success" in said, said


def lines_of(process: subprocess.Popen) -> queue.Queue:
    """The demo's output, line by line, as it comes (and echoed for the test's log)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read_until(lines: queue.Queue, seen: list[str], pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            break
        assert line is not None, f"the demo ended before printing {pattern!r}:\n" + "\n".join(seen[-40:])
        seen.append(line)
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"no {pattern!r} within {timeout:.0f} s:\n" + "\n".join(seen[-40:]))


def approve_in_the_ui(gate_url: str, api_url: str, user: str, password: str) -> None:
    """Log in, open the run's required actions, click Approve: what the person the demo asks does."""
    with browser_page() as page:
        log_in(page, api_url, user, password, gate_url.removeprefix(api_url))
        page.get_by_role("button", name=re.compile("^Approve$")).first.click(timeout=60_000)
        page.wait_for_timeout(2000)


def test_the_demo_hands_the_gate_to_a_person_and_keeps_everything_up_until_ctrl_c(tmp_path):
    platform_venvs("mlflow", ("2.16.2", "3.17.2"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))},
           "APPROVE": "ui", "KEEP": "1", "AIRLOCK_DATA_DIR": str(tmp_path / "demo"),
           "AIRLOCK_DEMO_STAGING_PORT": str(STAGING), "AIRLOCK_DEMO_PRODUCTION_PORT": str(PRODUCTION),
           "AIRLOCK_DEMO_AIRFLOW_PORT": str(AIRFLOW), "PYTHONPATH": str(REPO / "include")}
    demo = subprocess.Popen([sys.executable, "-m", "airlock.demo.run"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        lines = lines_of(demo)
        gate = read_until(lines, seen, r"    (http://\S+/required_actions)  \(this run's gate", 900).group(1)
        password = read_until(lines, seen, r"login: admin / (\S+)", 10).group(1)
        phases_before_gate = [m.group(1) for line in seen if (m := PHASE_LINE.search(line))]
        assert phases_before_gate[:4] == ["preflight", "backup_and_prepare", "compatibility", "staging_upgrade"]
        token = httpx.post(f"http://127.0.0.1:{AIRFLOW}/auth/token",
                           json={"username": "admin", "password": password}).json()["access_token"]
        waiting = httpx.get(f"http://127.0.0.1:{AIRFLOW}/airlock/upgrades",
                            headers={"Authorization": f"Bearer {token}"}).text
        assert "uat.approval waiting at a gate" in waiting  # in flight now, on the Upgrades page
        approve_in_the_ui(gate, f"http://127.0.0.1:{AIRFLOW}", "admin", password)
        page = read_until(lines, seen, r"Upgrades page: (http://\S+/airlock/upgrades) ", 900).group(1)
        read_until(lines, seen, r"KEEP=1: Airflow and both MLflow servers stay up; Ctrl-C stops them all", 10)
        assert any("run finished: success" in line for line in seen), seen[-40:]
        phases = [m.group(1) for line in seen if (m := PHASE_LINE.search(line))]
        assert {"uat", "production_upgrade", "conclude"} <= set(phases), phases
        assert any(" | upgraded | no | admin | " in line for line in seen), "the log names no approver"

        time.sleep(5)  # still up after the run
        assert demo.poll() is None
        assert httpx.get(f"http://127.0.0.1:{PRODUCTION}/version").text.strip() == "3.17.2"
        shown = httpx.get(page, headers={"Authorization": f"Bearer {token}"})
        assert shown.status_code == 200 and "upgraded" in shown.text and "2.16.2 → 3.17.2" in shown.text

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole foreground group
        assert demo.wait(timeout=120) == 0
        read_until(lines, seen, r"stopped Airflow and both MLflow servers", 10)
        assert not [port for port in (STAGING, PRODUCTION, AIRFLOW) if port_open("127.0.0.1", port)]
    finally:
        stop(demo)


def stop(demo: subprocess.Popen) -> None:
    """A demo still running after a failure gets SIGTERM, on which it stops what it started; SIGKILL
    only if that does not end it."""
    for signum, grace in ((signal.SIGTERM, 120), (signal.SIGKILL, 10)):
        if demo.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            demo.wait(timeout=grace)

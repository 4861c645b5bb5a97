"""The secret scan itself (tests/leaks.py) catches what it is there to catch: otherwise a clean
suite would prove nothing."""

from __future__ import annotations

import ast
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import leaks
from airlock.child_env import child_env


def started(env: dict) -> subprocess.Popen:
    """zstd waiting on its input: a process of the kind Airlock starts (marked as planted, so that only
    this test looks at it, not the watch of another pytest worker)."""
    process = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               env={**env, "AIRLOCK_SECRET_SCAN_PLANTED": "1"})
    time.sleep(0.2)
    return process


def forget(process_watch, *processes: subprocess.Popen) -> None:
    """Planted here on purpose: the suite-wide scan after this test must not count them."""
    for process in processes:
        process.kill()
        process.wait()
    time.sleep(3 * process_watch.interval)
    process_watch.take()


def test_a_tool_that_inherits_the_workers_environment_is_caught(process_watch):
    process = started(dict(os.environ))
    try:
        problems = leaks.process_problems(str(process.pid))
    finally:
        forget(process_watch, process)
    assert "'zstd -q' inherited AWS_SECRET_ACCESS_KEY" in problems
    assert "'zstd -q' has the worker_cloud_key secret in AWS_SECRET_ACCESS_KEY" in problems
    assert "'zstd -q' has the worker_connection secret in AIRFLOW_CONN_AIRLOCK_PLANTED_UNUSED" in problems


def test_the_minimal_environment_passes_and_a_password_in_argv_does_not(monkeypatch, process_watch):
    monkeypatch.setattr(leaks, "AIRLOCK_TOOLS", {*leaks.AIRLOCK_TOOLS, "cat"})
    clean = started(child_env())
    in_argv = subprocess.Popen(["cat", "-", leaks.PLANTED["database"]], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**child_env(), "AIRLOCK_SECRET_SCAN_PLANTED": "1"})
    time.sleep(0.2)
    try:
        clean_problems = leaks.process_problems(str(clean.pid))
        argv_problems = leaks.process_problems(str(in_argv.pid))
    finally:
        forget(process_watch, clean, in_argv)
    assert clean_problems == []
    assert argv_problems == ["argv of 'cat -' holds the database secret"]


def test_a_quoted_password_in_a_file_is_caught(tmp_path):
    since = time.time() - 1
    (tmp_path / "report.md").write_text(f"mysql://u:{quote(leaks.PLANTED['database'], safe='')}@db/x")
    (tmp_path / "clean.md").write_text("nothing here")
    found = leaks.files_problems([tmp_path], since)
    (tmp_path / "report.md").unlink()  # planted here on purpose: not a leak for the scan after this test
    assert found == [f"{tmp_path / 'report.md'} holds the database secret"]


def test_the_watch_catches_a_new_process_and_one_that_execs_a_tool_long_after_it_started(process_watch):
    watch = leaks.ProcessWatch(interval=0.1, young_seconds=0.5, recheck_rounds=10, planted_too=True)
    watch.thread.start()
    leaky = {**os.environ, "AIRLOCK_SECRET_SCAN_PLANTED": "1"}
    at_once = subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=leaky)
    late = subprocess.Popen(["sh", "-c", "sleep 2; exec zstd -c -q"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=leaky)  # a shell, old by the time it execs zstd
    wanted = {"'zstd -q' inherited AWS_SECRET_ACCESS_KEY", "'zstd -c' inherited AWS_SECRET_ACCESS_KEY"}
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not wanted <= set(watch.found):
        time.sleep(0.1)
    watch.stopping.set()
    forget(process_watch, at_once, late)
    assert wanted <= set(watch.found), watch.found


def test_a_process_that_execs_between_the_reads_is_not_judged_by_its_parents_command_line(monkeypatch):
    """A server's CLI forks its worker, which execs with the vendor's own variables (MLflow's
    _MLFLOW_SERVER_FILE_STORE, holding the database URL): read between the fork and the exec, the
    command line is still the CLI's (Airlock's) and the environment already the worker's."""
    cli = f"{leaks.venv_root()}/mlflow-2.16.2/bin/python\0/x/bin/mlflow\0server\0".encode()
    environ = f"_MLFLOW_SERVER_FILE_STORE=mysql://u:{quote(leaks.PLANTED['database'], safe='')}@db/m\0".encode()
    reads = {"environ": [environ, environ]}

    def read_proc(pid: str, name: str) -> bytes:
        return reads[name].pop(0)

    monkeypatch.setattr(leaks, "read_proc", read_proc)
    reads["cmdline"] = [cli, b"python\0-m\0gunicorn\0"]  # exec'd in between
    assert leaks.process_problems("1") == []
    reads["cmdline"] = [cli, cli]  # the CLI itself holding it: caught
    assert leaks.process_problems("1") == [
        "'python /x/bin/mlflow' has the database secret in _MLFLOW_SERVER_FILE_STORE"]


RUNS_A_PROCESS = {"run", "Popen", "check_output", "check_call", "call"}


def tool_runs_without_an_environment(source: str) -> list[int]:
    """The lines where code runs one of Airlock's tools, named in a literal argv, without `env=`: the
    suite-wide watch reads such a process as Airlock's, and the test's environment (AWS and Airflow
    variables) as a leak, failing whichever test happens to run beside it."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in RUNS_A_PROCESS and node.args and isinstance(node.args[0], ast.List)
            and node.args[0].elts and isinstance(program := node.args[0].elts[0], ast.Constant)
            and os.path.basename(str(program.value)) in leaks.AIRLOCK_TOOLS
            and not any(keyword.arg == "env" for keyword in node.keywords)]


def test_the_tests_run_airlocks_tools_with_an_environment_of_their_own():
    """Every test that runs zstd, mysql, helm … itself gives it an environment (child_env())."""
    assert tool_runs_without_an_environment('x = subprocess.run(["zstd", "-c"], input=b"")') == [1]
    assert tool_runs_without_an_environment('subprocess.Popen(["/usr/bin/helm", "list"])') == [1]
    assert tool_runs_without_an_environment('subprocess.run(["zstd", "-c"], env=child_env())') == []
    assert tool_runs_without_an_environment('subprocess.run(["sleep", "1"])') == []
    tests = Path(__file__).parent
    found = [f"{path.name}:{line}" for path in sorted(tests.glob("*.py"))
             for line in tool_runs_without_an_environment(path.read_text())]
    assert found == [], f"give these child_env() (airlock.child_env): {found}"

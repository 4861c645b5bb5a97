"""One Helm SDK call, in a child process whose argv[0] is `helm`.

Helm's Go code names its server-side-apply field manager after argv[0] (`filepath.Base(os.Args[0])`).
In an Airflow task that is whatever the task runner set its process title to, so an upgrade from a
worker would own fields under a stranger's name and conflict with every `helm upgrade` a person ran
(".spec.replicas … conflict with helm"). Run here, the manager is `helm`, as with the CLI. The request
(values included) comes on stdin, never argv; the answer is one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _upgrade(config, args: dict) -> Any:
    action = config.install if args["install"] else config.upgrade
    return action(args["chart"], args["name"], args["values"], timeout=args["timeout"],
                  description=args["description"], chart_version=args["chart_version"])


def _render(helm_python, args: dict) -> dict:
    chart = helm_python.Chart.load(args["chart"])
    try:
        return dict(chart.render(args["values"], name=args["name"], namespace=args["namespace"], is_upgrade=True))
    finally:
        chart.close()


OPERATIONS = {
    "upgrade": _upgrade,
    "history": lambda config, args: list(config.history(args["name"])),
    "rollback": lambda config, args: config.rollback(args["name"], version=args["revision"], timeout=args["timeout"]),
    "get_values": lambda config, args: dict(config.get_values(args["name"], revision=args["revision"]) or {}),
    "manifest": lambda config, args: config.get_all(args["name"], revision=args["revision"])["summary"]["manifest"],
    "status": lambda config, args: dict(config.status(args["name"])),
}


def call(request: dict) -> Any:
    """Run the request's operation; Helm's own errors become {"error": message}."""
    import helm_python

    args = request["args"]
    try:
        if request["op"] == "render":
            return {"result": _render(helm_python, args)}
        config = helm_python.Config(kubeconfig_path=request["kubeconfig"], namespace=args["namespace"])
        try:
            return {"result": OPERATIONS[request["op"]](config, args)}
        finally:
            config.close()
    except helm_python.HelmError as error:
        return {"error": str(error)}


if __name__ == "__main__":
    print(json.dumps(call(json.load(sys.stdin)), default=str))

"""Every guide's "review the changelog": the hop's release notes and its breaking notes at the gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from airlock.approval import release_lines
from airlock.config import ConfigError, load_targets
from airlock.release_notes import BreakingNote, hop_notes

SEMATIC_RELEASES = ["0.27.0", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0", "0.35.0", "0.39.0", "0.39.1",
                    "0.40.0", "0.41.0", "0.42.0rc1"]


def test_a_sematic_hop_links_each_release_and_lists_the_guides_breaking_notes():
    notes = hop_notes("sematic", SEMATIC_RELEASES, "0.30.0", "0.41.0")
    assert [r["version"] for r in notes["releases"]] == ["0.31.0", "0.32.0", "0.35.0", "0.39.0", "0.39.1", "0.40.0",
                                                        "0.41.0"]
    assert notes["releases"][0]["url"] == "https://github.com/sematic-ai/sematic/releases/tag/v0.31.0"
    assert [n["version"] for n in notes["breaking"]] == ["0.31.0", "0.32.0", "0.35.0", "0.39.0"]
    assert notes["drain_required"] == "0.35.0: the old release must be uninstalled first"
    assert "SQLAlchemy 2" in notes["breaking"][-1]["note"]


def test_a_hop_that_crosses_nothing_breaking_leaves_the_drain_as_it_is():
    notes = hop_notes("sematic", SEMATIC_RELEASES, "0.39.1", "0.41.0")
    assert notes["breaking"] == [] and notes["drain_required"] is None
    mlflow = hop_notes("mlflow", ["2.16.2", "2.22.0", "3.0.0", "3.17.2"], "2.16.2", "3.17.2")
    assert [n["version"] for n in mlflow["breaking"]] == ["3.0.0"]
    assert mlflow["releases"][-1]["url"] == "https://github.com/mlflow/mlflow/releases/tag/v3.17.2"
    zenml = hop_notes("zenml", ["0.58.2", "0.60.0", "0.90.0"], "0.58.2", "0.90.0")
    assert "Pydantic" in zenml["breaking"][0]["note"]
    assert zenml["releases"][0]["url"] == "https://github.com/zenml-io/zenml/releases/tag/0.60.0"


def test_the_targets_own_note_joins_the_table_and_can_forbid_skipping_the_drain():
    own = BreakingNote("0.40.0", "our SocketIO proxy must be restarted", runs_fail=True, source="targets.yaml")
    notes = hop_notes("sematic", SEMATIC_RELEASES, "0.39.1", "0.41.0", [own])
    assert notes["breaking"] == [{"version": "0.40.0", "note": "our SocketIO proxy must be restarted",
                                  "runs_fail": True, "uninstall_first": False, "source": "targets.yaml"}]
    assert notes["drain_required"] == "0.40.0: in-progress runs fail when the server is upgraded"
    lines = "\n".join(release_lines(notes))
    assert "- ⚠ **0.40.0**: our SocketIO proxy must be restarted (runs_fail) — targets.yaml" in lines
    assert "⚠ **Production's drain cannot be skipped for this hop** (0.40.0: in-progress runs fail" in lines
    assert "[0.40.0](https://github.com/sematic-ai/sematic/releases/tag/v0.40.0), [0.41.0](" in lines


def targets_with(tmp_path, notes) -> str:
    targets = yaml.safe_load(Path(load_targets().popitem()[1].source).read_text())
    targets["targets"]["mlflow_demo"]["release_notes"] = notes
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))
    return str(path)


def test_release_notes_in_the_targets_file_are_read_and_checked(tmp_path):
    target = load_targets(targets_with(tmp_path, [{"version": "3.18.0", "note": "re-login needed",
                                                    "uninstall_first": True}]))["mlflow_demo"]
    assert target.release_notes[0].version == "3.18.0" and target.release_notes[0].uninstall_first
    with pytest.raises(ConfigError, match=r"release_notes\[0\]\.version: 'soon' is not a version number"):
        load_targets(targets_with(tmp_path, [{"version": "soon", "note": "x"}]))
    with pytest.raises(ConfigError, match=r"release_notes\[0\]\.drain: unknown setting"):
        load_targets(targets_with(tmp_path, [{"version": "3.18.0", "note": "x", "drain": "skip"}]))

"""Where published versions come from (the package index, or a file or URL for air-gapped sites),
and which upgrades may pass the UAT gate without a human."""

from __future__ import annotations

import http.server
import threading

import pytest
from airlock.approval import auto_approval
from airlock.config_operations import ReleaseSource
from airlock.platforms.mlflow import MlflowAdapter
from airlock.releases import ReleaseSourceError, parse_listing, published_versions
from airlock.upgrade_log import approver_of
from airlock.versions import LATEST_PATCH, plan_upgrade

ADAPTER = MlflowAdapter("http://127.0.0.1:1")


def test_a_file_lists_one_version_per_line_with_comments(tmp_path):
    listing = tmp_path / "mlflow.txt"
    listing.write_text("# mirrored 2026-11-20\n2.16.0\n2.16.1  # the one we run\n\n2.16.2\n3.0.0rc1\n")
    versions = published_versions(ReleaseSource(file=str(listing)), ADAPTER)
    assert versions == ["2.16.0", "2.16.1", "2.16.2", "3.0.0rc1"]
    plan = plan_upgrade("2.16.1", LATEST_PATCH, versions, platform="mlflow", allow_minor_skips=False)
    assert (plan.target, str(plan.change)) == ("2.16.2", "patch")


def test_a_url_may_serve_a_json_list():
    class Releases(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'["2.16.1", "2.16.2"]'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Releases)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mlflow.json"
        assert published_versions(ReleaseSource(url=url), ADAPTER) == ["2.16.1", "2.16.2"]
    finally:
        server.shutdown()


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read the mlflow releases from file"),
    ("# nothing mirrored yet\n", "lists no mlflow version"),
    ("[2.16.1,", "lists no mlflow version"),
])
def test_an_unreadable_or_empty_source_is_named(tmp_path, content, expected):
    listing = tmp_path / "mlflow.txt"
    if content is not None:
        listing.write_text(content)
    with pytest.raises(ReleaseSourceError, match=expected) as error:
        published_versions(ReleaseSource(file=str(listing)), ADAPTER)
    assert str(listing) in str(error.value)


def test_parse_listing_ignores_blank_lines_and_comments():
    assert parse_listing("\n 1.0.0 \n#x\n1.0.1 # y\n") == ["1.0.0", "1.0.1"]


def plan_of(change: str) -> dict:
    return {"from": "2.16.1", "to": "2.16.2", "production": {"change": change}}


def test_only_a_patch_of_a_target_that_allows_it_is_auto_approved():
    reason = auto_approval("patch", plan_of("patch"))
    assert reason == "patch upgrade 2.16.1 → 2.16.2; the target says auto_approve: patch"
    assert auto_approval("patch", plan_of("minor")) is None
    assert auto_approval("patch", plan_of("major")) is None
    assert auto_approval("none", plan_of("patch")) is None


def test_the_log_names_an_auto_approval_as_such():
    assert approver_of({"chosen_options": ["Approve"], "auto_approved": "patch upgrade"}) == \
        "auto-approved (patch upgrade)"
    assert approver_of({"chosen_options": ["Reject"]}) == "nobody (no answer before the timeout)"

"""Upgrade-path planning: what Airlock allows, refuses, and says about skipped releases."""

import pytest
from airlock.versions import Change, PlanError, classify, parse_version, plan_upgrade

PUBLISHED = ["2.15.0", "2.16.0", "2.16.1", "2.16.2", "2.17.0", "2.17.2", "2.22.5", "3.0.0", "3.0.1",
             "3.1.0rc1", "3.1.0", "3.17.2", "not-a-version"]


def plan(current, requested, allow=False):
    return plan_upgrade(current, requested, PUBLISHED, platform="mlflow", allow_minor_skips=allow)


@pytest.mark.parametrize(("current", "target", "change"), [
    ("2.16.1", "2.16.2", Change.PATCH), ("2.16.2", "2.17.0", Change.MINOR),
    ("2.22.5", "3.0.0", Change.MAJOR), ("3.0.0", "3.0.0", Change.NONE)])
def test_classify(current, target, change):
    assert classify(parse_version(current), parse_version(target)) is change


def test_patch_upgrade_is_planned_without_skips():
    result = plan("2.16.1", "2.16.2")
    assert (result.current, result.target, result.change, result.skipped_minors) == \
        ("2.16.1", "2.16.2", Change.PATCH, [])


def test_latest_patch_resolves_within_the_running_minor():
    assert plan("2.16.0", "latest-patch").target == "2.16.2"
    assert plan("2.16.2", "latest-patch").is_noop


def test_downgrade_is_refused_with_the_reason():
    with pytest.raises(PlanError, match="downgrades are refused"):
        plan("2.17.0", "2.16.2")


def test_zenml_downgrade_refusal_says_what_zenml_says():
    from airlock.platforms.zenml import ZenmlAdapter

    with pytest.raises(PlanError, match="ZenML does not support downgrading a server"):
        plan_upgrade("0.98.0", "0.90.0", ["0.90.0", "0.98.0"], platform="zenml", allow_minor_skips=True,
                     downgrade_note=ZenmlAdapter.downgrade_note)


def test_unpublished_version_is_refused_and_newest_are_listed():
    with pytest.raises(PlanError, match=r"2\.18\.0 is not a published release.*3\.17\.2"):
        plan("2.16.2", "2.18.0", allow=True)


def test_prereleases_are_not_targets():
    with pytest.raises(PlanError, match="not a published release"):
        plan("3.0.1", "3.1.0rc1", allow=True)


def test_skipping_minors_is_refused_and_names_the_path():
    with pytest.raises(PlanError) as error:
        plan("2.16.2", "3.0.1")
    message = str(error.value)
    assert "2.16.2 → 2.17.2 → 2.22.5 → 3.0.1" in message
    assert "allow_minor_skips" in message


def test_skipping_minors_when_allowed_names_what_is_skipped():
    result = plan("2.16.2", "3.17.2", allow=True)
    assert result.change is Change.MAJOR
    assert result.skipped_minors == ["2.17.2", "2.22.5", "3.0.1", "3.1.0"]
    assert "skipping minor releases 2.17.2, 2.22.5, 3.0.1, 3.1.0" in result.describe()


def test_next_minor_is_not_a_skip():
    assert plan("2.16.2", "2.17.2").skipped_minors == []


@pytest.mark.parametrize("bad", ["", "three", "3.17.2+local"])
def test_bad_versions_name_the_input(bad):
    with pytest.raises(PlanError, match="target_version"):
        plan("2.16.2", bad)

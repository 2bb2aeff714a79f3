"""Rollout policies as the settings file writes them: waves by host labels, soak, matching."""

from __future__ import annotations

import pytest

from workers.rollout_policy import PolicyError, parse_labels, parse_policies, policy_for
from workers.settings import SettingsError, load_settings

CANARY_THEN_REST = [
    {
        "match": "registry.example/shop/*",
        "soak": 600,
        "waves": [{"name": "canary", "hosts": "ring=canary"}, {"name": "rest", "hosts": "*"}],
    }
]


def test_hosts_go_to_the_first_wave_they_match_and_the_unlabeled_to_the_last():
    [policy] = parse_policies(CANARY_THEN_REST)
    waves = policy.assign(
        {
            "fra-1": {"ring": "canary", "site": "fra"},
            "fra-2": {"site": "fra"},
            "ams-1": {},
        }
    )
    assert waves == [["fra-1"], ["ams-1", "fra-2"]]
    strict = parse_policies(
        [{"waves": [{"name": "a", "hosts": "ring=canary"}, {"name": "b", "hosts": "site=fra"}]}]
    )[0]
    assert strict.assign({"x": {}, "y": {"site": "fra"}}) == [[], ["x", "y"]]


def test_the_first_matching_policy_with_several_waves_decides():
    policies = parse_policies(
        [
            {"match": "registry.example/db:*", "waves": [{"name": "all", "hosts": "*"}]},
            *CANARY_THEN_REST,
        ]
    )
    assert policy_for(policies, "registry.example/shop/web:1") is policies[1]
    assert policy_for(policies, "registry.example/db:16") is None  # one wave: all at once
    assert policy_for(policies, "other.example/web:1") is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"waves": []}], "waves must be a list"),
        ([{"waves": [{"name": "a", "hosts": "ring"}]}], "label=value pairs"),
        ([{"waves": [{"name": "a"}, {"name": "a"}]}], "wave names must differ"),
        ([{"waves": [{"name": "a"}], "soak": -1}], "soak must be"),
        ([{"waves": [{"name": "a"}], "on_failure": "explode"}], "on_failure must be"),
        ([{"waves": [{"name": "a"}], "speed": 3}], "unknown key(s) speed"),
        ("[{", "not JSON"),
    ],
)
def test_a_bad_policy_is_named(raw, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_policies(raw)


def test_policies_and_host_labels_come_from_the_settings(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text(
        '[[rollouts]]\nmatch = "*"\nsoak = 30\n'
        'waves = [{name = "canary", hosts = "ring=canary"}, {name = "rest", hosts = "*"}]\n'
    )
    settings = load_settings(
        {"PODHOOK_CONFIG": str(config), "PODHOOK_HOST_LABELS": "ring=canary, site=fra"}
    )
    assert settings.host_labels == {"ring": "canary", "site": "fra"}
    assert [w.name for w in settings.rollouts[0].waves] == ["canary", "rest"]
    assert settings.rollouts[0].soak == 30
    config.write_text('[[rollouts]]\nwaves = [{name = "a", hosts = "x"}]\n')
    with pytest.raises(SettingsError, match="rollouts entry 1, wave 1: hosts"):
        load_settings({"PODHOOK_CONFIG": str(config)})


def test_labels_read_like_selectors():
    assert parse_labels("ring=canary,site=fra") == {"ring": "canary", "site": "fra"}
    assert parse_labels("") == {}

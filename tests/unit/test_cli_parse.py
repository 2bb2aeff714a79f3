"""`podhook parse` prints what a payload yields without queuing, and exits 2 on bad input."""

import json
from pathlib import Path

from click.testing import CliRunner

from webhook.cli import main

PAYLOADS = Path(__file__).parent.parent / "payloads"


def run(*args):
    return CliRunner().invoke(main, ["parse", *args])


def test_prints_events_and_ignored_count(tmp_path):
    digest = "sha256:" + "d" * 64
    body = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "team/app",
                    "tag": "2",
                    "digest": digest,
                    "url": f"http://reg.example.com:5000/v2/team/app/manifests/{digest}",
                },
                "request": {"host": "reg.example.com:5000"},
            },
            {"action": "pull", "target": {"repository": "team/app", "tag": "2", "digest": digest}},
        ]
    }
    payload = tmp_path / "envelope.json"
    payload.write_text(json.dumps(body))
    result = run("--source", "distribution", str(payload))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "events": [
            {
                "registry": "reg.example.com:5000",
                "repository": "team/app",
                "tag": "2",
                "digest": digest,
            }
        ],
        "ignored": 1,
    }


def test_published_sample_without_tag_yields_no_event():
    result = run(
        "--source", "distribution", str(PAYLOADS / "distribution" / "distribution-push.json")
    )
    assert result.exit_code == 0
    assert json.loads(result.output) == {"events": [], "ignored": 3}


def test_malformed_payload_exits_2_with_the_reason(tmp_path):
    payload = tmp_path / "bad.json"
    payload.write_text('{"events": [{"action": "push"}]}')
    result = run("--source", "distribution", str(payload))
    assert result.exit_code == 2
    assert "events[0].target" in result.stderr


def test_unknown_source_is_a_usage_error(tmp_path):
    payload = tmp_path / "x.json"
    payload.write_text("{}")
    result = run("--source", "nosuch", str(payload))
    assert result.exit_code == 2 and "unknown source 'nosuch'" in result.output


def test_every_command_has_help():
    for command in (
        [],
        ["serve"],
        ["worker"],
        ["run"],
        ["jobs"],
        ["jobs", "show"],
        ["hosts"],
        ["parse"],
    ):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_recorded_registry_envelopes():
    folder = PAYLOADS / "distribution"
    push = json.loads(
        run("--source", "distribution", str(folder / "recorded-manifest-push.json")).output
    )
    assert push == {
        "events": [
            {
                "registry": "127.0.0.1:54415",
                "repository": "team/app",
                "tag": "1.2",
                "digest": "sha256:fad9d07d124f8b62b97753c481a3da89710d69e6a4359b21a9da5ded5c103f5d",
            }
        ],
        "ignored": 0,
    }
    for name in ("recorded-blob-push.json", "recorded-manifest-pull.json"):
        assert json.loads(run("--source", "distribution", str(folder / name)).output) == {
            "events": [],
            "ignored": 1,
        }


def test_sources_without_a_host_print_null_or_the_given_registry():
    path = str(PAYLOADS / "nexus" / "nexus-component-created-flux-recv.json")
    [event] = json.loads(run("--source", "nexus", path).output)["events"]
    assert event["registry"] is None and event["repository"] == "app1/alpine"
    [event] = json.loads(run("--source", "nexus", "--registry", "Nexus.Example.com", path).output)[
        "events"
    ]
    assert event["registry"] == "nexus.example.com"


def test_headers_reach_the_parser():
    path = str(PAYLOADS / "gitea" / "gitea-package-created.json")
    result = run("--source", "gitea", "--header", "X-Gitea-Event: package", path)
    assert json.loads(result.output)["events"][0]["tag"] == "1.4.2"
    bad = run("--source", "gitea", "--header", "no colon", path)
    assert bad.exit_code == 2 and "is not 'Name: value'" in bad.output

"""`kuma-dp bootstrap render` as a user runs it: request file or stdin in, YAML out, one-line errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kuma_dp.cli import cli
from tests.helpers.resources import dataplane

pytestmark = pytest.mark.unit

RESOURCE = dataplane("web-1", "web", 8080)
REQUEST = {"mesh": "default", "name": "web-1", "workdir": "/tmp", "dataplaneResource": json.dumps(RESOURCE)}


def test_render_from_stdin_plaintext() -> None:
    result = CliRunner().invoke(
        cli, ["bootstrap", "render", "--plaintext", "--xds-port", "15678", "-"], input=json.dumps(REQUEST)
    )
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.output)
    assert out["node"]["id"] == "default.web-1"
    ads = next(c for c in out["staticResources"]["clusters"] if c["name"] == "ads_cluster")
    assert ads["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"][
        "socketAddress"
    ] == {
        "address": "127.0.0.1",
        "portValue": 15678,
    }


def test_render_to_file_with_ca_and_stored_dataplane(tmp_path: Path) -> None:
    request = dict(REQUEST)
    del request["dataplaneResource"]
    (tmp_path / "req.json").write_text(json.dumps(request))
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump(RESOURCE))
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    out_file = tmp_path / "bootstrap.yaml"
    result = CliRunner().invoke(
        cli,
        [
            "bootstrap",
            "render",
            str(tmp_path / "req.json"),
            "--ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--dataplane-file",
            str(tmp_path / "dp.yaml"),
            "--admin-port",
            "0",
            "-o",
            str(out_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    out = yaml.safe_load(out_file.read_text())
    assert out["node"]["cluster"] == "web"
    assert out["staticResources"]["secrets"][0]["name"] == "cp_validation_ctx"
    assert "admin" not in out


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-"], "{", "request -: not valid JSON"),
        (["-"], json.dumps(REQUEST), "caCert: no CA"),
        (["--plaintext", "-"], json.dumps({**REQUEST, "proxyType": "x"}), "proxyType: unknown proxy type"),
        (["--plaintext", "/nonexistent/req.json"], "", "request /nonexistent/req.json: cannot read the file"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str], stdin: str, message: str) -> None:
    result = CliRunner().invoke(cli, ["bootstrap", "render", *args], input=stdin)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1

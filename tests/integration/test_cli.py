"""The CLI's contract: exit codes 0 (ok), 1 (data failed a check), 2 (usage or settings error)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.imagefactory import encode, noise_image


def test_validate_exit_0_on_valid_data(cli, good_raw, project):
    result = cli("data", "validate")
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert json.loads((project / "reports" / "data_validation.json").read_text())["ok"] is True


def test_validate_exit_1_names_bad_file_and_reason(cli, good_raw, project):
    (good_raw / "cat" / "broken.jpg").write_bytes(encode(noise_image(1, (64, 64)), "JPEG")[:300])
    result = cli("data", "validate")
    assert result.exit_code == 1
    assert "cat/broken.jpg" in result.output and "does not decode" in result.output
    assert (good_raw / "cat" / "broken.jpg").exists()


def test_validate_custom_raw_and_report_and_quarantine(cli, good_raw, project):
    (good_raw / "ant" / "zero.png").write_bytes(b"")
    report = project / "elsewhere" / "r.json"
    result = cli("data", "validate", "--raw", good_raw, "--report", report, "--quarantine", project / "q")
    assert result.exit_code == 1
    assert json.loads(report.read_text())["quarantined"][0]["path"] == "ant/zero.png"
    assert (project / "q" / "ant" / "zero.png").exists()
    assert cli("data", "validate", "--raw", good_raw).exit_code == 0


def test_unknown_override_exit_2_with_suggestion(cli, good_raw):
    result = cli("data", "validate", "-S", "validate.min_widht=3")
    assert result.exit_code == 2
    assert "did you mean 'validate.min_width'" in result.output


def test_override_changes_the_verdict(cli, good_raw):
    assert cli("data", "validate", "-S", "validate.min_width=64").exit_code == 1
    assert cli("data", "validate", "--set", "validate.min_images_per_class=13").exit_code == 1


def test_missing_raw_folder_exit_2(cli, project):
    result = cli("data", "validate")
    assert result.exit_code == 2
    assert "lensops data demo" in result.output


def test_prepare_exit_codes(cli, good_raw, project):
    assert cli("data", "prepare").exit_code == 0
    assert (project / "data" / "prepared" / "manifest.parquet").exists()
    (good_raw / "ant" / "zero.png").write_bytes(b"")
    result = cli("data", "prepare")
    assert result.exit_code == 1
    assert "fails validation" in result.output


def test_params_option_and_config_command(cli, project, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("prepare:\n  seed: 5\n")
    result = cli("--params", other, "config", "-S", "demo.size=16")
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["prepare"]["seed"] == 5 and shown["demo"]["size"] == 16
    assert cli("--params", tmp_path / "missing.yaml", "config").exit_code == 2


def test_demo_command_writes_digits(cli, project):
    result = cli("data", "demo", "-S", "demo.size=16")
    assert result.exit_code == 0
    assert len(list((project / "data" / "raw").rglob("*.png"))) == 1797


def test_console_script_is_installed(project):
    exe = Path(sys.executable).parent / "lensops"
    result = subprocess.run([exe, "data", "validate"], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 2 and "is not a folder" in result.stderr
    assert subprocess.run([exe, "--help"], capture_output=True).returncode == 0

"""A user's mistake on the command line: one line naming the problem and the fix, exit code 2, nothing created;
the traceback only with --debug."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from u2seg_core.config import ConfigError, PipelineConfig


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("range.yaml", "cluster:\n  k: -3\n", ["cluster.k", "greater than or equal to 1", "-3"]),
        ("typo.yaml", "cluster:\n  kk: 3\n", ["unknown key 'cluster.kk'"]),
        ("section.yml", "clusters: {}\n", ["unknown key 'clusters'"]),
        ("broken.yaml", "cluster: [\n  k: 3\n", ["not valid YAML", "line"]),
        ("broken.json", '{"cluster": ', ["not valid JSON", "line 1"]),
        ("list.yaml", "- 1\n- 2\n", ["must be a mapping"]),
        ("config.txt", "cluster: {}\n", ["unknown extension", ".yaml"]),
        ("secret.yaml", "storage:\n  options: {secret: abc}\n", ["credential", "environment", "profile"]),
    ],
)
def test_a_bad_config_is_one_line_and_creates_nothing(tmp_path, name, text, words):
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / "run"
    one_line_error(invoke("run", "--config", str(config), "--out", str(out)), *words)
    assert not out.exists()


def test_upper_case_yaml_extension_is_read_as_yaml(tmp_path):
    config = tmp_path / "c.YAML"
    config.write_text("cluster:\n  k: 7\n")
    assert PipelineConfig.load(config).cluster.k == 7


def test_missing_config_file(tmp_path):
    one_line_error(invoke("run", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")),
                   "cannot be read", "check the path")
    assert not (tmp_path / "r").exists()


def test_missing_images_path_creates_no_run(tmp_path):
    out = tmp_path / "run"
    one_line_error(invoke("run", "--images", str(tmp_path / "photos"), "--preset", "demo", "--out", str(out)),
                   "--images", "does not exist", "image folder")
    assert not out.exists()
    (tmp_path / "notes.txt").write_bytes(b"x")
    one_line_error(invoke("run", "--images", str(tmp_path / "notes.txt"), "--preset", "demo", "--out", str(out)),
                   "neither an image nor a COCO .json", "folder")
    assert not out.exists()


def test_run_directory_inside_the_image_folder(tmp_path):
    one_line_error(invoke("run", "--images", str(tmp_path), "--preset", "demo", "--out", str(tmp_path / "run")),
                   "inside --images", "elsewhere")
    assert list(tmp_path.iterdir()) == []


def test_run_directory_that_is_a_file(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    one_line_error(invoke("run", "--preset", "demo", "--out", str(target)), "is a file", "folder")
    one_line_error(invoke("stage", "plan", "--run", str(target)), "is a file")
    assert target.read_text() == "not a folder"


def test_folder_with_other_files_is_not_taken_as_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(invoke("run", "--preset", "demo", "--out", str(tmp_path)), "no run.json", "new --out folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_status_and_stage_on_a_folder_that_is_no_run(tmp_path):
    one_line_error(invoke("status", str(tmp_path)), "not a u2seg run", "u2seg run --out")
    one_line_error(invoke("status", str(tmp_path / "absent")), "not a u2seg run")
    one_line_error(invoke("stage", "cluster", "--run", str(tmp_path)), "not a u2seg run")
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("cluster:\n  kk: 3\n")
    result = invoke("--debug", "run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)

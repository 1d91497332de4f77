from pathlib import Path

import pytest

from ebai.core.configfile import load_yaml, parse_problem
from ebai.core.errors import InputError


@pytest.mark.parametrize(
    ("text", "where"),
    [("tile: [8\n", "line 2, column 1"), ("a: b: c\n", "line 1, column 5"), ('x: "open\n', "line 2, column 1")],
)
def test_bad_yaml_is_one_line_with_its_position(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_yaml(path, "adapter config", "give a YAML file")
    message = str(err.value)
    assert "\n" not in message and "is not valid YAML" in message and where in message and "c.yaml" in message


def test_missing_file_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"recipe 'nope\.yaml' does not exist: give a YAML file"):
        load_yaml(Path("nope.yaml"), "recipe", "give a YAML file")


def test_good_yaml_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tile: [8, 8]\nname: x\n")
    assert load_yaml(path, "adapter config", "") == {"tile": [8, 8], "name": "x"}


def test_other_errors_are_folded_to_one_line() -> None:
    assert parse_problem(ValueError("first\n  second")) == "first second"

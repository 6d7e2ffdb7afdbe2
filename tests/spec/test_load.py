"""Strict loading: every bad input names the file, the line and what was expected."""

from pathlib import Path

import pytest

from ablate.spec import SpecError, load_grid

GOOD = """\
name: t
models:
  m: {builtin: tiny-llama}
axes:
  model: [m]
  data: [d]
  algorithm: [dpo]
eval:
  benchmarks: [gsm8k]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_good_grid_loads_frozen(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    assert grid.axes.algorithm == ("dpo",)
    with pytest.raises(Exception):
        grid.name = "other"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  m: {builtin: tiny-llama}", "  m: {builtin: tiny-llama"))
    with pytest.raises(SpecError) as err:
        load_grid(path)
    assert str(path) in str(err.value) and "line 4" in str(err.value)


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path, GOOD.replace("  algorithm: [dpo]", "  algoritm: [dpo]"))
    with pytest.raises(SpecError) as err:
        load_grid(path)
    message = str(err.value)
    assert "unknown key 'axes.algoritm'" in message
    assert "did you mean 'algorithm'" in message
    assert "line 7" in message


def test_unknown_nested_algorithm_key(tmp_path):
    path = write(tmp_path, GOOD + "algorithms:\n  fast:\n    kind: dpo\n    betta: 0.2\n")
    with pytest.raises(SpecError) as err:
        load_grid(path)
    assert "did you mean 'beta'" in str(err.value) and "line 13" in str(err.value)
    assert "'algorithms.fast.betta'" in str(err.value)


def test_bad_algorithm_value_is_named_as_the_file_spells_it(tmp_path):
    # pydantic's location holds the union tag (algorithms.fast.dpo.beta); the file has no 'dpo'
    path = write(tmp_path, GOOD + "algorithms:\n  fast:\n    kind: dpo\n    beta: -1\n")
    with pytest.raises(SpecError) as err:
        load_grid(path)
    assert "line 13: algorithms.fast.beta: Input should be greater than 0" in str(err.value)


def test_wrong_type_and_missing_key(tmp_path):
    path = write(tmp_path, GOOD.replace("name: t\n", "").replace("[dpo]", "[dpo]\n  seed: [one]"))
    with pytest.raises(SpecError) as err:
        load_grid(path)
    assert "missing required key 'name'" in str(err.value)
    assert "axes.seed.0" in str(err.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_grid(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_grid(write(tmp_path, "- a\n- b\n"))


def test_a_repeated_key_is_an_error_not_a_silent_overwrite(tmp_path):
    path = write(tmp_path, GOOD + "algorithms:\n  fast:\n    kind: dpo\n    beta: 0.5\n"
                                  "    beta: 0.05\n")
    with pytest.raises(SpecError, match=r"line 14: key 'beta' repeats the one on line 13"):
        load_grid(path)

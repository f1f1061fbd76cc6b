"""The README documents every option and the two commands."""

from pathlib import Path

from proxy.config import OPTIONS

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_option_is_documented() -> None:
    for opt in OPTIONS:
        assert f"`--{opt.name}" in README, opt.name
        assert opt.env_name in README, opt.env_name


def test_the_two_commands_are_documented() -> None:
    assert "make run" in README and "make test" in README

import pytest

from proxy.cli import main


def test_version_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "serving-sidecar" in capsys.readouterr().out


def test_an_expiry_beyond_any_calendar_is_printed_not_raised() -> None:
    from proxy.cli import _expiry

    assert _expiry(1e300).startswith("far future")
    assert _expiry(None) == "-"

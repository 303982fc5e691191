import pytest

from rlbook.claims import claim


def test_claim_prints_and_returns_outcome(capsys, monkeypatch):
    monkeypatch.delenv("RLBOOK_STRICT_CLAIMS", raising=False)
    assert claim(1 < 2, "one below two") is True
    assert claim(3 < 2, "three below two") is False           # not strict: reported, not raised
    out = capsys.readouterr().out
    assert "one below two: True" in out and "three below two: False" in out and "differs" in out


@pytest.mark.parametrize("value", ["1", "yes"])
def test_strict_claim_raises_only_when_false(monkeypatch, value):
    monkeypatch.setenv("RLBOOK_STRICT_CLAIMS", value)
    assert claim(True, "holds")
    with pytest.raises(AssertionError, match="does not hold|does not show"):
        claim(False, "fails")


def test_strict_off_for_zero(monkeypatch):
    monkeypatch.setenv("RLBOOK_STRICT_CLAIMS", "0")
    assert claim(False, "fails quietly") is False


def test_claim_needs_text():
    with pytest.raises(ValueError, match="text"):
        claim(True, "")

"""The bearer-token file and check shared by the ingest gateway and the fence API (geoiot/tokens.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoiot.tokens import Denied, Grant, TokenFileError, Tokens, parse

INGEST = "i" * 20
FENCES = "f" * 20
DEVICE = "d" * 24

TEXT = f"""# comment
{INGEST} ingest

{FENCES} fences
{DEVICE} ingest bus-
"""


def test_the_file_gives_each_token_its_scope_and_prefix() -> None:
    tokens = Tokens(parse(TEXT))
    assert len(tokens) == 3
    grant = tokens.check(f"Bearer {DEVICE}", "ingest")
    assert isinstance(grant, Grant) and grant.track_prefix == "bus-" and grant.line == 5
    assert grant.allows_track("bus-7") and not grant.allows_track("car-7")
    assert isinstance(tokens.check(f"bearer  {INGEST} ", "ingest"), Grant)  # scheme case and spaces
    assert tokens.check(f"Bearer {INGEST}", "ingest").allows_track("anything")


@pytest.mark.parametrize("header, status", [
    (None, 401), ("", 401), ("Basic abc", 401), ("Bearer", 401), ("Bearer   ", 401),
    ("Bearer " + "x" * 20, 403), (f"Bearer {FENCES}", 403), (f"Bearer {INGEST}x", 403),
])
def test_missing_malformed_wrong_or_other_scope_tokens_are_refused(header, status) -> None:
    denied = Tokens(parse(TEXT)).check(header, "ingest")
    assert isinstance(denied, Denied) and denied.status == status and denied.message


@pytest.mark.parametrize("text, problem", [
    ("tok", "line 1"), (f"{INGEST} admin", "scope 'admin'"), ("short ingest", "16 characters"),
    (f"{INGEST} ingest\n{INGEST} fences", "line 2: the same token"), (f"{INGEST} ingest a b", "line 1"),
])
def test_a_malformed_file_names_its_line(text, problem) -> None:
    with pytest.raises(TokenFileError, match=problem):
        parse(text)


def test_an_unreadable_file_is_a_token_file_error(tmp_path) -> None:
    with pytest.raises(TokenFileError, match="missing"):
        Tokens.from_file(tmp_path / "missing")
    path = tmp_path / "tokens"
    path.write_text(TEXT)
    assert len(Tokens.from_file(path)) == 3


@given(st.text(min_size=1, max_size=40).filter(lambda t: t.strip() == t and " " not in t and t))
def test_only_the_exact_token_is_admitted(candidate: str) -> None:
    result = Tokens(parse(TEXT)).check(f"Bearer {candidate}", "fences")
    assert isinstance(result, Grant) == (candidate == FENCES)

"""The documentation says what the code does."""

from pathlib import Path

from hindlog.catalog import SCHEMA, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_schema_doc_matches_the_code() -> None:
    doc = (ROOT / "docs" / "schema.md").read_text()
    assert SCHEMA.strip() in doc, "docs/schema.md is out of date: copy catalog.SCHEMA into it"
    assert f"version\n{SCHEMA_VERSION}" in doc or f"version {SCHEMA_VERSION}" in doc


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n")[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci

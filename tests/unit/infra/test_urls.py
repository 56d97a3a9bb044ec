"""Database URLs in messages: no password, no piece of one, wherever it sits in the URL."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import ConfigError
from infra.urls import check_url, redact_url, scrub

SECRET = "Zq9-hunter2-Xv"

# (url, what must remain visible)
SHOWN = [
    (f"postgresql://app:{SECRET}@db.internal:5432/recsys", "postgresql://app:***@db.internal:5432/recsys"),
    (f"postgresql://app@db:5432/recsys?password={SECRET}", "postgresql://app@db:5432/recsys?password=***"),
    (
        f"postgresql://app@db/recsys?sslmode=require&sslpassword={SECRET}&application_name=x",
        "postgresql://app@db/recsys?sslmode=require&sslpassword=***&application_name=x",
    ),
    (f"mysql+pymysql://root:{SECRET}@127.0.0.1:3306/shop?charset=utf8mb4", "root:***@127.0.0.1:3306/shop"),
    (f"host=db user=app password={SECRET} dbname=recsys", "host=db user=app password=*** dbname=recsys"),
    ("postgresql://app@db/recsys", "postgresql://app@db/recsys"),
    ("postgresql://db/recsys?sslmode=require", "postgresql://db/recsys?sslmode=require"),
]

# passwords with characters that should have been percent-encoded: hidden whole
UNENCODED = [
    "p@ss" + SECRET,
    SECRET + "/tail",
    "head#" + SECRET,
    "a?" + SECRET,
    "x@y/z#" + SECRET + "@w",
]


@pytest.mark.parametrize(("url", "shown"), SHOWN)
def test_redact_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    redacted = redact_url(url)
    assert SECRET not in redacted
    assert shown in redacted


@pytest.mark.parametrize("password", UNENCODED)
def test_unencoded_passwords_are_hidden_whole(password: str) -> None:
    url = f"postgresql://app:{password}@db.internal:5432/recsys"
    redacted = redact_url(url)
    assert redacted == "postgresql://app:***@db.internal:5432/recsys"
    for piece in password.replace("@", " ").replace("/", " ").replace("#", " ").replace("?", " ").split():
        assert len(piece) < 3 or piece not in redacted


@pytest.mark.parametrize("password", UNENCODED)
def test_check_url_refuses_an_ambiguous_user_info_without_echoing_it(password: str) -> None:
    url = f"postgresql://app:{password}@db.internal:5432/recsys"
    with pytest.raises(ConfigError) as caught:
        check_url(url, "--database-url")
    message = str(caught.value)
    assert "percent-encode" in message
    assert "app:***@db.internal" in message
    for piece in ("hunter2", "tail", "head", "@w"):
        assert piece not in message


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db/recsys",
        "postgresql://app:p%40ss%2Fw%23rd@db/recsys",
        f"postgresql://app@db/recsys?password={SECRET}",
        "postgresql://app:pw@db/recsys?application_name=me@laptop",
        "postgresql://localhost/recsys",
    ],
)
def test_check_url_accepts_what_every_driver_parses_alike(url: str) -> None:
    assert check_url(url) == url


def test_scrub_removes_the_secrets_a_driver_message_quotes() -> None:
    url = f"postgresql://app:{SECRET}@db/recsys?sslpassword=abc%2Fdef"
    said = f"cannot connect to {url}: password {SECRET!r} rejected, sslpassword abc/def"
    scrubbed = scrub(said, url)
    assert SECRET not in scrubbed
    assert "abc/def" not in scrubbed
    assert "abc%2Fdef" not in scrubbed
    assert "postgresql://app:***@db/recsys?sslpassword=***" in scrubbed


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@127.0.0.1:1/recsys?password={SECRET}",
        f"postgresql://app@127.0.0.1:1/recsys?sslmode=disable&sslpassword={SECRET}",
        f"postgresql://app:{SECRET}@127.0.0.1:1/recsys",
        f"postgresql://app:p@ss/{SECRET}#x@127.0.0.1:1/recsys",
        f"postgresql://app:{SECRET}/tail@127.0.0.1:1/recsys",
    ],
)
def test_cli_errors_never_show_a_password(
    url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recsys migrate` against a database URL nobody answers at (port 1): exit 2, one line, and
    not the password nor any piece of it (before: the query password and pieces were echoed)."""
    from recsys.cli import main

    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    assert main(["migrate", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys migrate: error:") and err.count("\n") == 1, err
    for piece in (SECRET, "hunter2", "p@ss", "tail", "#x"):
        assert piece not in err, err


@pytest.mark.parametrize(
    "url",
    [
        f"mysql+pymysql://root@127.0.0.1:1/shop?password={SECRET}",
        f"mysql+pymysql://root:{SECRET}@127.0.0.1:1/shop",
        f"mysql+pymysql://root:p@ss{SECRET}@127.0.0.1:1/shop",
        f"not a url {SECRET}",
    ],
)
def test_source_url_errors_never_show_a_password(
    url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.cli import main

    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    assert main(["etl", "--source-url", url, "--lake", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys etl: error:"), err
    assert SECRET not in err and "hunter2" not in err, err


@pytest.mark.parametrize("url", [SECRET, f"mysql://root:{SECRET}@db/x", f"{SECRET}:{SECRET}"])
def test_a_database_url_of_the_wrong_kind_is_not_echoed(
    url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.cli import main

    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path))
    assert main(["migrate", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "must be a postgresql:// URL" in err
    assert SECRET not in err

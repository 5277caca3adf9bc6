"""Kaggle: where credentials are found (as the kaggle client looks) and the dataset download."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from .. import config
from ..errors import UserError


def _kaggle_config_dir() -> Path:
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    home = Path.home() / ".kaggle"
    if home.exists():
        return home
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "kaggle"


def kaggle_credentials_location() -> str | None:
    """Where Kaggle credentials were found (as the kaggle 2.2 client looks), without importing kaggle."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text(errors="replace").strip():
            return f"~/.kaggle/{name}"
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    config_file = _kaggle_config_dir() / "kaggle.json"
    if config_file.is_file():
        try:
            values = json.loads(config_file.read_text())
        except (ValueError, OSError):
            values = {}
        if isinstance(values, dict):
            user, key = user or values.get("username"), key or values.get("key")
    if user and key:
        return "KAGGLE_USERNAME/KAGGLE_KEY" if not config_file.is_file() else str(config_file)
    if (Path.home() / ".kaggle" / "credentials.json").is_file():
        return "~/.kaggle/credentials.json (kaggle auth login)"
    return None


def has_kaggle_credentials() -> bool:
    return kaggle_credentials_location() is not None


CREDENTIALS_HELP = (
    "set KAGGLE_API_TOKEN (a token from https://www.kaggle.com/settings/api), save it to "
    "~/.kaggle/access_token, run 'kaggle auth login', or use KAGGLE_USERNAME+KAGGLE_KEY or ~/.kaggle/kaggle.json"
)


def describe_default_source() -> str:
    """What ingest uses when no source is given, and how to choose otherwise (one line)."""
    where = kaggle_credentials_location()
    if where:
        return (
            f"No source given: Kaggle credentials found ({where}), so ingesting {config.KAGGLE_DATASET} "
            "from Kaggle; use --source demo for generated data or --source PATH for a local copy."
        )
    return (
        "No source given and no Kaggle credentials found, so ingesting GENERATED demo data; for the real "
        f"dataset {CREDENTIALS_HELP}, or pass --source PATH to a Kaggle-layout folder or .zip."
    )


def _import_kaggle_api():
    """``KaggleApi`` imported quietly: ``import kaggle`` authenticates at import and prints help when it can't."""
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def download_kaggle(dest: str | os.PathLike) -> Path:
    """Download jacksoncrow/stock-market-dataset into ``dest``; returns the zip (or folder) to ingest.

    The zip is kept as it is (ingest reads its members directly, and its CRCs are free fingerprints).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not has_kaggle_credentials():
        raise UserError(f"no Kaggle credentials found; {CREDENTIALS_HELP}")
    KaggleApi = _import_kaggle_api()
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client exits when no credential works
        raise UserError(f"Kaggle rejected the credentials; {CREDENTIALS_HELP}") from None
    slug = config.KAGGLE_DATASET
    try:
        api.dataset_download_files(slug, path=str(dest), unzip=False, quiet=False)
    except Exception as exc:  # network, 401/403, 404: say it in one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden")):
            raise UserError(
                f"Kaggle refused the download ({text}); check your credentials: {CREDENTIALS_HELP}"
            ) from None
        raise UserError(f"Kaggle download of {slug} failed: {text}") from None
    archive = dest / (slug.split("/")[1] + ".zip")
    if archive.is_file():
        return archive
    if (dest / "stocks").is_dir() or (dest / "etfs").is_dir():  # a client that unzipped for us
        return dest
    raise UserError(f"the Kaggle download left no {archive.name} in {dest}; delete that folder and retry")

"""Storage and tracking URLs: their scheme, a SQLite URL's file, and their secrets masked.

The one place that reads a URL's form: the kinds of Optuna storage (search.storage.schemes,
which says which schemes are whose), the stores a search uses (search.storage.stores) and the
report's read-only open all ask here.
Secrets in URLs are never printed or logged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# scheme://user:password@host -> scheme://user:***@host
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)@")
# ?password=... or &password=... in a query string (libpq and redis accept these).
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&\s]+)", re.IGNORECASE)


SQLITE = "sqlite:///"


def scheme(url: str) -> str:
    """The URL's scheme in lower case without its driver (`postgresql+psycopg2://` ->
    `postgresql`); "" for a plain path (a journal file)."""
    if "://" not in url:
        return ""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def sqlite_file(url: str) -> str | None:
    """The database file of a `sqlite:///FILE` URL, query string left out ("" when none is
    named, `:memory:` as given); None for any other URL or path."""
    if scheme(url) != "sqlite":
        return None
    rest = url.split("://", 1)[1]
    return rest[1:].split("?", 1)[0] if rest.startswith("/") else ""


def mask_url(url: str | None) -> str:
    """The URL with any password replaced by ***."""
    if not url:
        return ""
    url = _PASSWORD.sub(r"\g<head>***@", url)
    return _QUERY.sub(r"\g<head>***", url)


def mask_text(text: str, *urls: str | None) -> str:
    """`text` with every password of `urls` replaced by ***: for messages from libraries."""
    for url in urls:
        if not url:
            continue
        for pattern in (_PASSWORD, _QUERY):
            for match in pattern.finditer(url):
                secret = match.group("secret")
                # Libraries may show the password percent-decoded.
                for form in {secret, unquote(secret)}:
                    text = text.replace(form, "***")
    return text

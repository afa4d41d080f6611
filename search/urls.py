"""Secrets in storage and tracking URLs are never printed or logged: mask them."""

from __future__ import annotations

import re
from urllib.parse import unquote

# scheme://user:password@host -> scheme://user:***@host
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)@")
# ?password=... or &password=... in a query string (libpq and redis accept these).
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&\s]+)", re.IGNORECASE)


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

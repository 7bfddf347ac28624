"""URL checks shared by several settings groups (a bad URL fails at start, naming the setting)."""

from __future__ import annotations

from urllib.parse import urlsplit


def http_base_url(value: str | None) -> str | None:
    """An http(s) base URL with a host and no query or fragment, without its trailing slash."""
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    if "?" in value or "#" in value:
        raise ValueError("must not carry a query string or fragment")
    if not url_host(value):  # "https://" would pass here and fail on the first call, building the stream URL
        raise ValueError("must name a host, e.g. https://bridge.example.com")
    return value.rstrip("/")


def v1_urls(value: str | None) -> str | None:
    """Comma-separated OpenAI API bases (http(s)://host/.../v1), normalised; None when empty."""
    if value is None or value.strip() == "":
        return None
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise ValueError(f"{url!r} must be an http(s):// URL with a host")
        if not url.endswith("/v1"):
            raise ValueError(f"{url!r} must end in /v1 (the OpenAI API base)")
    return ",".join(urls)


def url_host(url: str) -> str | None:
    """The host of ``url``, or None when it has none or cannot be parsed (``ws://``, ``ws://:80``)."""
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None

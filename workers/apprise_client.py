"""apprise, loaded once with its log records stripped of URLs: checking a URL and building a
sender for the notification URLs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import apprise

# Most apprise URLs hold their service's token; apprise prints URLs when it cannot parse one
# and in its debug lines, so its records lose every URL before any handler sees them.
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://\S+")


class _DropUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL.sub(r"\1://***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_apprise_log = logging.getLogger("apprise")
_apprise_log.addFilter(_DropUrls())
# Their debug lines print the request URLs, where notification services keep their tokens.
_apprise_log.setLevel(max(_apprise_log.getEffectiveLevel(), logging.WARNING))
_urllib3_log = logging.getLogger("urllib3")
_urllib3_log.setLevel(max(_urllib3_log.getEffectiveLevel(), logging.INFO))


def is_usable(url: str) -> bool:
    """Whether apprise knows how to send to ``url`` (nothing is sent)."""
    return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None


def new_sender(urls: Iterable[str]) -> apprise.Apprise:
    """An apprise sender for every URL of ``urls``."""
    sender = apprise.Apprise()
    for url in urls:
        sender.add(url)
    return sender

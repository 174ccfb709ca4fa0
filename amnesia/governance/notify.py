"""Tell the reviewers a candidate waits: a JSON POST to each configured webhook (chat, mail gateway, pager).

The body holds ids, figures and a link to the reviewers' page, never record text. With a secret set, each
POST carries `X-Amnesia-Signature: sha256=<HMAC of the body>` so a receiver can tell it from a forgery.
A receiver that is down does not undo the registration: the outcome is returned and logged, and the page
lists the candidate whether or not anyone was told.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from pydantic import BaseModel

from amnesia.core.settings import Settings

log = logging.getLogger(__name__)
EVENT = "candidate_registered"
SIGNATURE_HEADER, EVENT_HEADER = "X-Amnesia-Signature", "X-Amnesia-Event"
_ATTEMPTS, _TIMEOUT_S = 2, 5.0


class Delivery(BaseModel):
    url: str
    ok: bool
    status: int | None = None
    error: str = ""


def page_url(settings: Settings, name: str, version: str) -> str | None:
    """The candidate's page on the reviewers' site, when its address is configured."""
    if not settings.review_url:
        return None
    return f"{settings.review_url.rstrip('/')}/models/{quote(name, safe='')}/versions/{quote(version, safe='')}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def candidate_event(settings: Settings, name: str, version: str, figures: dict[str, float], **ids: Any) -> dict:
    """What a receiver is told: the version, its figures, ids and counts, and where to decide."""
    return {
        "event": EVENT,
        "model": name,
        "version": version,
        "figures": {k: round(float(v), 6) for k, v in sorted(figures.items())},
        "url": page_url(settings, name, version),
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    } | ids


def notify(settings: Settings, event: dict[str, Any]) -> list[Delivery]:
    """POST the event to every configured webhook; two tries each, short timeouts; never raises."""
    body = json.dumps(event, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", EVENT_HEADER: str(event.get("event", EVENT))}
    if settings.review_webhook_secret:
        headers[SIGNATURE_HEADER] = signature(settings.review_webhook_secret.get_secret_value(), body)
    out = []
    for url in settings.webhook_urls():
        delivery = Delivery(url=url, ok=False)
        for _ in range(_ATTEMPTS):
            try:
                resp = requests.post(url, data=body, headers=headers, timeout=_TIMEOUT_S)
                delivery = Delivery(url=url, ok=resp.status_code < 300, status=resp.status_code)
            except requests.RequestException as err:
                delivery = Delivery(url=url, ok=False, error=err.__class__.__name__)
            if delivery.ok:
                break
        if not delivery.ok:
            log.warning("notification to %s failed (%s)", url, delivery.status or delivery.error)
        out.append(delivery)
    return out

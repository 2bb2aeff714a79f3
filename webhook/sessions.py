"""Status page sessions kept in Redis: the cookie carries only a random id, signed, so that
logging out, expiry and a changed admin token each end a session for real.

A session lasts ``session_lifetime`` seconds from its login (the Redis key's expiry), whatever
is done with it meanwhile. A browser that is not logged in holds an anonymous id that nothing
stores: the login form's token is derived from it, so a login posted by another site fails.
The cookie is signed with the app's secret key, itself derived from the admin token, so a new
admin token refuses every earlier cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

from flask import Flask, Request, Response, current_app, request
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer
from redis.exceptions import RedisError
from werkzeug.datastructures import CallbackDict

log = logging.getLogger("podhook.webhook")

KEY_PREFIX = "podhook:session:"
SALT = b"podhook page session id"
_serializer = TaggedJSONSerializer()


def _key(sid: str) -> str:
    # Keys hold a hash of the id: what Redis lists (KEYS, a dump) cannot be replayed as a cookie.
    return KEY_PREFIX + hashlib.sha256(sid.encode()).hexdigest()


def _new_id() -> str:
    return secrets.token_urlsafe(32)


class PageSession(CallbackDict[str, Any], SessionMixin):
    """A session's data, with the id its cookie carries.

    ``stored`` is true for a logged-in session, whose data lives in Redis; an anonymous one is
    kept nowhere. ``error`` says why a cookie's session could not be read (Redis down).
    """

    def __init__(
        self, initial: dict[str, Any] | None = None, *, sid: str, stored: bool, sent: bool
    ) -> None:
        def on_update(session: PageSession) -> None:
            session.modified = True
            session.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.stored = stored
        self.expires_at: float | None = None
        self.sent = sent  # the browser already holds this id
        self.ended = False
        self.error: str | None = None
        self.modified = False
        self.accessed = False

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().setdefault(key, default)


def login_form_token(secret_key: str | bytes, sid: str) -> str:
    """The form token of an anonymous session: only a browser holding ``sid`` can post it."""
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return hmac.new(key, b"podhook login form " + sid.encode(), hashlib.sha256).hexdigest()


class RedisSessionInterface(SessionInterface):
    """Flask's session, read from and written to Redis under the id the cookie carries."""

    def _signer(self, app: Flask) -> Signer:
        return Signer(app.secret_key, salt=SALT, digest_method=hashlib.sha256)  # type: ignore[arg-type]

    def _anonymous(self, app: Flask, sid: str | None) -> PageSession:
        fresh = sid is None
        sid = sid or _new_id()
        assert app.secret_key is not None
        token = login_form_token(app.secret_key, sid)
        return PageSession({"csrf": token}, sid=sid, stored=False, sent=not fresh)

    def open_session(self, app: Flask, request: Request) -> PageSession | None:
        """The session the request's cookie names; an anonymous one for no cookie, a cookie
        that is not signed with the current key, or one whose session ended or expired."""
        if not app.secret_key:
            return None  # no admin token: the page is disabled
        cookie = request.cookies.get(self.get_cookie_name(app))
        if not cookie:
            return self._anonymous(app, None)
        try:
            sid = self._signer(app).unsign(cookie).decode()
        except (BadSignature, UnicodeDecodeError):
            return self._anonymous(app, None)
        try:
            raw = app.extensions["podhook"]["redis"].get(_key(sid))
        except RedisError as error:
            log.error("status page: session not read: Redis: %s", error)
            session = self._anonymous(app, sid)
            session.error = f"Redis unavailable: {error}"
            return session
        if raw is None:
            return self._anonymous(app, sid)
        data = _serializer.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return PageSession(data, sid=sid, stored=True, sent=True)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write a logged-in session's changes (flashed notices, say) to Redis without
        extending it, and send the cookie when its id is new or the session ended."""
        assert isinstance(session, PageSession)
        name = self.get_cookie_name(app)
        settings = app.extensions["podhook"]["settings"]
        options: dict[str, Any] = {
            "path": self.get_cookie_path(app),
            "domain": self.get_cookie_domain(app),
            "httponly": True,
            "samesite": "Strict",
            "secure": request.is_secure or settings.secure_cookies,
        }
        if session.accessed:
            response.vary.add("Cookie")
        if session.ended:
            response.delete_cookie(name, **options)
            return
        if session.stored and session.modified:
            try:
                # XX: a session ended meanwhile (logged out in another tab) stays ended.
                app.extensions["podhook"]["redis"].set(
                    _key(session.sid), _serializer.dumps(dict(session)), xx=True, keepttl=True
                )
            except RedisError as error:
                log.error("status page: session not saved: Redis: %s", error)
        if session.sent or not session.accessed:
            return
        value = self._signer(app).sign(session.sid.encode()).decode()
        if session.stored and session.expires_at is not None:
            lifetime = max(0, int(session.expires_at - time.time()))
            response.set_cookie(
                name, value, max_age=lifetime, expires=int(session.expires_at), **options
            )
        else:
            response.set_cookie(name, value, **options)


def start_session(session: Any, data: dict[str, Any]) -> None:
    """Make ``session`` a logged-in session holding ``data``, stored under a new id (never the
    one the browser brought, so an id planted before the login is worth nothing) that expires
    after ``session_lifetime``. Raises RedisError when Redis does not take it; ``session`` is
    unchanged then."""
    assert isinstance(session, PageSession)
    extensions = current_app.extensions["podhook"]
    lifetime = extensions["settings"].session_lifetime
    sid = _new_id()
    extensions["redis"].set(_key(sid), _serializer.dumps(data), ex=lifetime)
    session.clear()
    session.update(data)
    session.sid, session.stored, session.sent = sid, True, False
    session.expires_at = time.time() + lifetime
    session.modified = False  # stored just now


def end_session(session: Any) -> None:
    """Delete ``session`` from Redis and the cookie from the browser: a copy of the cookie
    opens nothing afterwards. Raises RedisError when Redis does not delete it; ``session`` is
    unchanged then."""
    assert isinstance(session, PageSession)
    if session.stored:
        current_app.extensions["podhook"]["redis"].delete(_key(session.sid))
    session.clear()
    session.stored = False
    session.ended = True
    session.modified = False

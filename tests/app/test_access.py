"""Access to the admin API and the status page: limits on wrong admin tokens per address,
sessions in Redis that logging out and expiry really end, cookie flags, form tokens on every
post. Against a real Redis, with Flask's test client and with `podhook serve`."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import flask
import pytest
from redis import Redis

from tests.app.served import podhook_serve
from tests.conftest import free_port
from webhook.app import create_app
from webhook.limits import client_key
from workers.hosts import register_host
from workers.settings import SettingsError, load_settings

ADMIN = "admin-token-for-access-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ATTACKER = "203.0.113.7"
ADMIN_DESK = "198.51.100.20"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def app_for(redis_url: str, **settings: Any) -> Any:
    return create_app(redis_url=redis_url, admin_token=ADMIN, **settings)


def browser(app: Any, address: str = "127.0.0.1", base_url: str = "http://localhost") -> Any:
    """A test client that comes from ``address``."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    client.base_url = base_url
    return client


def form_token(client: Any) -> str:
    """The form token of the page the client sees at ``/`` (login form or status page)."""
    response = client.get("/", base_url=client.base_url)
    [token] = CSRF.findall(response.text)[:1]
    return token


def login(client: Any, token: str = ADMIN) -> Any:
    csrf = form_token(client)
    return client.post("/login", data={"token": token, "csrf": csrf}, base_url=client.base_url)


def logged_in(client: Any) -> bool:
    return 'name="token"' not in client.get("/", base_url=client.base_url).text


def session_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter("podhook:session:*"))


def set_cookie_headers(response: Any) -> list[str]:
    return [v for v in response.headers.getlist("Set-Cookie") if v.startswith("session=")]


# --- limits on the login ----------------------------------------------------------------------


def test_wrong_logins_are_limited_per_address(redis_url, redis, caplog):
    caplog.set_level("DEBUG")
    app = app_for(redis_url, login_limit=3, auth_limit_window=300)
    attacker = browser(app, ATTACKER)
    guesses = [f"guess-{n}-{ADMIN}" for n in range(6)]
    statuses = [login(attacker, guess).status_code for guess in guesses[:3]]
    assert statuses == [401, 401, 401]

    refused = [login(attacker, guess) for guess in guesses[3:]]
    assert [r.status_code for r in refused] == [429, 429, 429]
    first = refused[0]
    assert first.mimetype == "text/html" and "Too many wrong tokens" in first.text
    assert 'name="token"' in first.text  # the login form, saying why
    wait = int(first.headers["Retry-After"])
    assert 0 < wait <= 300
    assert f"try again in {wait} s" in first.text

    # Over the limit, the right token is refused too: otherwise the answer would say which
    # guess was right.
    assert login(attacker, ADMIN).status_code == 429
    assert not logged_in(attacker)

    # The admin, from another address, logs in at once.
    desk = browser(app, ADMIN_DESK)
    assert login(desk).status_code == 303 and logged_in(desk)

    limited = [r for r in caplog.records if "limited" in r.getMessage()]
    assert len(limited) == 1, [r.getMessage() for r in limited]
    assert ATTACKER in limited[0].getMessage()
    assert "status page logins" in limited[0].getMessage()
    for guess in [*guesses, ADMIN]:
        assert guess not in caplog.text
    assert ADMIN not in caplog.text


def test_the_limit_is_shared_by_every_web_process(redis_url, redis):
    """Two apps on one Redis stand for two gunicorn workers: failures on one count on both."""
    first, second = (browser(app_for(redis_url, login_limit=2), ATTACKER) for _ in range(2))
    assert login(first, "wrong-1").status_code == 401
    assert login(second, "wrong-2").status_code == 401
    assert login(first, "wrong-3").status_code == 429
    assert login(second, "wrong-4").status_code == 429


def test_the_right_token_is_not_counted(redis_url, redis):
    app = app_for(redis_url, login_limit=2, admin_token_limit=2)
    client = browser(app, ADMIN_DESK)
    for _ in range(5):
        assert login(client).status_code == 303
        assert client.get("/v1/jobs", headers=AUTH).status_code == 200
    assert list(redis.scan_iter("podhook:auth-failures:*")) == []
    assert login(client, "wrong").status_code == 401
    assert client.get("/v1/jobs", headers=AUTH).status_code == 200


def test_an_address_may_try_again_once_its_window_ends(redis_url, redis):
    app = app_for(redis_url, login_limit=1, auth_limit_window=600)
    attacker = browser(app, ATTACKER)
    assert login(attacker, "wrong").status_code == 401
    [key] = redis.scan_iter("podhook:auth-failures:login:*")
    assert 590_000 < redis.pttl(key) <= 600_000  # the window runs from the first failure
    assert login(attacker, "wrong").status_code == 429
    redis.pexpire(key, 1)
    deadline = time.monotonic() + 2
    while redis.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert login(attacker).status_code == 303


def test_ipv6_addresses_are_counted_by_their_64(redis_url, redis):
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    app = app_for(redis_url, login_limit=1)
    assert login(browser(app, "2001:db8:1:2::10"), "wrong").status_code == 401
    assert login(browser(app, "2001:db8:1:2::99"), "wrong").status_code == 429
    assert login(browser(app, "2001:db8:1:3::10")).status_code == 303


# --- limits on the admin API ------------------------------------------------------------------


def test_wrong_api_tokens_are_limited_per_address(redis_url, redis, caplog):
    caplog.set_level("DEBUG")
    app = app_for(redis_url, admin_token_limit=3, auth_limit_window=120)
    attacker = browser(app, ATTACKER)
    tries = [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer guess-1-" + ADMIN},
    ]
    assert [attacker.get("/v1/jobs", headers=h).status_code for h in tries] == [401] * 3

    for headers in ({"Authorization": "Bearer guess-2-" + ADMIN}, AUTH, {}):
        response = attacker.get("/v1/hosts", headers=headers)
        assert response.status_code == 429 and response.is_json
        wait = int(response.headers["Retry-After"])
        assert 0 < wait <= 120 and response.json["retry_after"] == wait
        assert response.json["status"] == 429
        assert "too many wrong or missing admin tokens" in response.json["error"]
    assert attacker.post("/v1/reconcile", headers=AUTH, json={"all": True}).status_code == 429
    # What anyone may read stays readable.
    assert attacker.get("/openapi.yaml").status_code == 200

    desk = browser(app, ADMIN_DESK)
    assert desk.get("/v1/jobs", headers=AUTH).status_code == 200

    limited = [r.getMessage() for r in caplog.records if "limited" in r.getMessage()]
    assert len(limited) == 1 and ATTACKER in limited[0] and "admin API" in limited[0]
    assert "guess-" not in caplog.text and ADMIN not in caplog.text


def test_page_and_api_limits_are_counted_apart(redis_url, redis):
    app = app_for(redis_url, login_limit=1, admin_token_limit=1)
    client = browser(app, ATTACKER)
    assert login(client, "wrong").status_code == 401
    assert client.get("/v1/jobs", headers=AUTH).status_code == 200
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers=AUTH).status_code == 429


def test_without_redis_the_limits_let_attempts_through_and_nothing_is_a_500(caplog):
    app = create_app(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        admin_token=ADMIN,
        login_limit=1,
        admin_token_limit=1,
    )
    client = browser(app, ATTACKER)
    for _ in range(2):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert login(client, "wrong").status_code == 401
    # The right token gets past the limit, and on to the Redis error.
    assert client.get("/v1/jobs", headers=AUTH).status_code == 503
    response = login(client)
    assert response.status_code == 503 and "Redis unavailable" in response.text
    assert 'name="token"' in response.text
    assert "not limited: Redis" in caplog.text


# --- sessions ---------------------------------------------------------------------------------


def test_a_cookie_replayed_after_logout_is_refused(redis_url, redis):
    register_host(redis, "host-a")
    app = app_for(redis_url)
    client = browser(app)
    assert login(client).status_code == 303
    cookie = client.get_cookie("session")
    assert cookie is not None and len(session_keys(redis)) == 1
    csrf = form_token(client)

    out = client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303
    [deleted] = set_cookie_headers(out)
    assert "Max-Age=0" in deleted or "Expires=Thu, 01 Jan 1970" in deleted
    assert session_keys(redis) == []

    replay = browser(app, ATTACKER)
    replay.set_cookie("session", cookie.value)
    assert not logged_in(replay)
    refused = replay.post("/reconcile", data={"csrf": csrf, "host": "host-a"})
    assert refused.status_code == 401 and 'name="token"' in refused.text
    assert redis.llen("rq:queue:podhook-host-a") == 0


def test_the_cookie_carries_only_a_signed_id(redis_url, redis):
    app = app_for(redis_url)
    client = browser(app)
    before = client.get("/")
    [anonymous] = set_cookie_headers(before)
    planted = anonymous.split(";")[0].split("=", 1)[1]
    response = login(client)
    [cookie] = set_cookie_headers(response)
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value != planted  # a new id at login: an id planted beforehand is worth nothing
    sid, _, signature = value.rpartition(".")
    assert len(sid) >= 40 and signature
    assert "admin" not in value and form_token(client) not in value
    assert ADMIN not in cookie
    # A tampered id or signature opens nothing.
    forged = browser(app, ATTACKER)
    forged.set_cookie("session", sid[:-1] + ("A" if sid[-1] != "A" else "B") + "." + signature)
    assert not logged_in(forged)
    forged.set_cookie("session", sid)
    assert not logged_in(forged)


def test_a_session_expires_after_its_lifetime(redis_url, redis):
    app = app_for(redis_url, session_lifetime=120)
    client = browser(app)
    response = login(client)
    [cookie] = set_cookie_headers(response)
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))
    assert 110 <= max_age <= 120
    [key] = session_keys(redis)
    assert 110 <= redis.ttl(key) <= 120

    # Using the session (a notice flashed and shown) keeps its data but does not extend it.
    token = form_token(client)
    assert client.post("/reconcile", data={"csrf": token, "host": "nosuch"}).status_code == 303
    assert "no such host: nosuch" in client.get("/").text
    assert 0 < redis.ttl(key) <= 120

    redis.pexpire(key, 1)
    deadline = time.monotonic() + 2
    while redis.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not logged_in(client)


def test_the_default_lifetime_is_hours_not_weeks(redis_url, redis):
    client = browser(app_for(redis_url))
    login(client)
    [key] = session_keys(redis)
    assert 8 * 3600 - 60 <= redis.ttl(key) <= 8 * 3600


def test_a_session_ended_meanwhile_is_not_brought_back(redis_url, redis):
    """A request that changes its session (a notice) while another tab logs out must not
    store the session again when it ends."""
    app = app_for(redis_url)
    client = browser(app)
    login(client)
    cookie = client.get_cookie("session").value
    interface = app.session_interface
    with app.test_request_context("/", headers={"Cookie": f"session={cookie}"}):
        opened = interface.open_session(app, flask.request)
        assert opened.get("admin") is True
        [key] = session_keys(redis)
        redis.delete(key)  # the other tab's logout
        opened["_flashes"] = [("ok", "Reconcile queued")]
        interface.save_session(app, opened, app.response_class())
    assert session_keys(redis) == []
    assert not logged_in(client)


# --- cookie flags -----------------------------------------------------------------------------


def test_the_cookie_is_secure_over_tls(redis_url, redis):
    client = browser(app_for(redis_url), base_url="https://podhook.example.com")
    anonymous = client.get("/", base_url=client.base_url)
    response = login(client)
    for cookie in (*set_cookie_headers(anonymous), *set_cookie_headers(response)):
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert response.status_code == 303 and logged_in(client)


def test_the_cookie_is_not_secure_over_plain_http_unless_asked(redis_url, redis):
    plain = login(browser(app_for(redis_url)))
    [cookie] = set_cookie_headers(plain)
    assert "Secure" not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    behind_proxy = login(browser(app_for(redis_url, secure_cookies=True)))
    [cookie] = set_cookie_headers(behind_proxy)
    assert "; Secure" in cookie


def test_session_settings_are_read_and_bounded():
    settings = load_settings(
        {
            "PODHOOK_SECURE_COOKIES": "true",
            "PODHOOK_SESSION_LIFETIME": "3600",
            "PODHOOK_LOGIN_LIMIT": "5",
            "PODHOOK_ADMIN_TOKEN_LIMIT": "50",
            "PODHOOK_AUTH_LIMIT_WINDOW": "60",
        }
    )
    assert settings.secure_cookies is True and settings.session_lifetime == 3600
    assert (settings.login_limit, settings.admin_token_limit) == (5, 50)
    assert settings.auth_limit_window == 60
    with pytest.raises(SettingsError, match="session_lifetime must be between 60 and 604800"):
        load_settings({"PODHOOK_SESSION_LIFETIME": str(31 * 24 * 3600)})


# --- form tokens ------------------------------------------------------------------------------


def page_posts(app: Any) -> list[str]:
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("page.") and "POST" in (rule.methods or ())
    )


def test_every_post_of_the_page_needs_the_form_token(redis_url, redis):
    register_host(redis, "host-a")
    app = app_for(redis_url)
    assert page_posts(app) == ["/approve", "/login", "/logout", "/reconcile", "/rollouts"]
    client = browser(app)
    login(client)
    for path in page_posts(app):
        for form in ({"host": "host-a", "token": ADMIN}, {"csrf": "forged", "token": ADMIN}):
            response = client.post(path, data=form)
            assert response.status_code == 403, (path, form)
    assert logged_in(client)  # nothing was ended
    assert redis.llen("rq:queue:podhook-host-a") == 0


@pytest.mark.parametrize("form", [{}, {"csrf": ""}, {"csrf": "forged"}])
def test_logout_without_the_form_token_is_refused(redis_url, redis, form):
    client = browser(app_for(redis_url))
    login(client)
    response = client.post("/logout", data=form)
    assert response.status_code == 403 and "Refused" in response.text
    assert set_cookie_headers(response) == []
    assert logged_in(client) and len(session_keys(redis)) == 1


def test_a_login_posted_from_elsewhere_is_refused(redis_url, redis, caplog):
    """Login CSRF: another site's form carries another browser's token, or none."""
    app = app_for(redis_url)
    victim = browser(app)
    victim.get("/")
    attacker = browser(app, ATTACKER)
    foreign = form_token(attacker)
    for form in ({"token": ADMIN}, {"token": ADMIN, "csrf": foreign}):
        response = victim.post("/login", data=form)
        assert response.status_code == 403 and "log in again" in response.text
        assert not logged_in(victim)
    # The form it shows then works.
    assert login(victim).status_code == 303 and logged_in(victim)
    assert ADMIN not in caplog.text


def test_the_login_form_token_does_not_outlive_a_new_admin_token(redis_url, redis):
    old = browser(app_for(redis_url))
    token = form_token(old)
    cookie = old.get_cookie("session")
    new = browser(create_app(redis_url=redis_url, admin_token="new-" + ADMIN))
    new.set_cookie("session", cookie.value)
    response = new.post("/login", data={"token": "new-" + ADMIN, "csrf": token})
    assert response.status_code == 403


# --- as deployed ------------------------------------------------------------------------------


class Browser:
    """urllib with a cookie jar and no redirects followed: status, headers and body."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def request(
        self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as answer:
                return answer.status, answer.headers, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()


def test_limits_and_logout_under_podhook_serve(tmp_path, redis_url, redis):
    env = {
        "PODHOOK_REDIS_URL": redis_url,
        "PODHOOK_ADMIN_TOKEN": ADMIN,
        "PODHOOK_LOGIN_LIMIT": "5",
        "PODHOOK_ADMIN_TOKEN_LIMIT": "4",
    }
    with podhook_serve(tmp_path / "serve", env, workers=2) as served:
        attacker = Browser(served.url)
        _, _, form = attacker.request("/")
        [csrf] = CSRF.findall(form)
        statuses = []
        for n in range(8):
            status, headers, _ = attacker.request("/login", {"token": f"guess-{n}", "csrf": csrf})
            statuses.append(status)
        assert statuses == [401] * 5 + [429] * 3
        assert 0 < int(headers["Retry-After"]) <= 300

        api = []
        for n in range(6):
            status, headers, body = attacker.request(
                "/v1/jobs", headers={"Authorization": f"Bearer api-guess-{n}"}
            )
            api.append(status)
        assert api == [401] * 4 + [429] * 2
        assert json.loads(body)["status"] == 429 and int(headers["Retry-After"]) > 0

        # Another client address is needed for the admin: the limit holds for 127.0.0.1 now.
        redis.delete(*redis.scan_iter("podhook:auth-failures:*"))
        admin = Browser(served.url)
        _, _, form = admin.request("/")
        [csrf] = CSRF.findall(form)
        status, headers, _ = admin.request("/login", {"token": ADMIN, "csrf": csrf})
        assert status == 303 and "HttpOnly" in headers["Set-Cookie"]
        [cookie] = [c for c in admin.jar if c.name == "session"]
        _, _, page = admin.request("/")
        assert "Log out" in page
        [csrf] = CSRF.findall(page)[:1]
        assert admin.request("/logout", {"csrf": csrf})[0] == 303

        replay = Browser(served.url)
        replay.jar.set_cookie(cookie)
        _, _, page = replay.request("/")
        assert 'name="token"' in page and "Log out" not in page

        output = served.output()
    assert "status page logins from 127.0.0.1 limited" in output
    assert "admin API requests with a wrong or missing token from 127.0.0.1 limited" in output
    assert "guess-" not in output and ADMIN not in output

"""Who may watch and who may act (`api.operator`), and the signed sessions behind the cookie."""

from __future__ import annotations

import pytest

from vllm_gateway.api.operator import ADMIN, COOKIE, VIEW, Access, same_origin
from vllm_gateway.api.sessions import Sessions
from vllm_gateway.settings import Settings


def scope(method: str = "GET", bearer: str | None = None, cookie: str | None = None,
          site: str | None = None, origin: str | None = None, host: str = "gw:8080") -> dict:
    headers = [(b"host", host.encode())]
    if bearer is not None:
        headers.append((b"authorization", f"Bearer {bearer}".encode()))
    if cookie is not None:
        headers.append((b"cookie", f"other=1; {COOKIE}={cookie}".encode()))
    if site is not None:
        headers.append((b"sec-fetch-site", site.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"method": method, "headers": headers}


def test_no_key_at_all_is_open() -> None:
    access = Access(Settings())
    assert access.open and access.allows(scope("POST"), ADMIN) == (True, "")


@pytest.mark.parametrize(("keys", "key", "role"), [
    ({"admin_api_key": "A"}, "A", ADMIN),
    ({"metrics_api_key": "M"}, "M", ADMIN),  # no admin key: the metrics key acts too
    ({"metrics_api_key": "M", "admin_api_key": "A"}, "M", VIEW),
    ({"metrics_api_key": "M", "admin_api_key": "A"}, "A", ADMIN),
    ({"metrics_api_key": "M", "api_keys": ["C"]}, "C", None),  # a client key opens nothing here
    ({"admin_api_key": "A"}, "wrong", None),
])
def test_the_role_of_each_key(keys: dict, key: str, role: str | None) -> None:
    access = Access(Settings(**keys))
    assert access.role_of_key(key) == role
    assert access.role(scope(bearer=key)) == (role, False)


def test_only_client_keys_refuse_the_page_and_say_what_to_set() -> None:
    access = Access(Settings(api_keys=["C"]))
    allowed, why = access.allows(scope(bearer="C"), VIEW)
    assert not allowed and "metrics_api_key or admin_api_key" in why


def test_a_viewer_may_watch_but_not_act() -> None:
    access = Access(Settings(metrics_api_key="M", admin_api_key="A"))
    assert access.allows(scope(bearer="M"), VIEW)[0]
    allowed, why = access.allows(scope("POST", bearer="M"), ADMIN)
    assert not allowed and "admin key" in why


def test_a_session_cookie_acts_only_from_the_page_itself() -> None:
    access = Access(Settings(admin_api_key="A"))
    token = access.sessions.issue(ADMIN)
    assert access.allows(scope(cookie=token), VIEW)[0]  # reading needs no origin check
    assert access.allows(scope("POST", cookie=token, site="same-origin"), ADMIN)[0]
    for refused in (scope("POST", cookie=token, site="same-site"), scope("POST", cookie=token, site="cross-site"),
                    scope("POST", cookie=token), scope("POST", cookie=token, origin="http://evil:8080")):
        allowed, why = access.allows(refused, ADMIN)
        assert not allowed and "from the operator page itself" in why
    assert access.allows(scope("POST", cookie=token, origin="https://gw:8080"), ADMIN)[0]  # no Sec-Fetch-Site: Origin
    assert access.allows(scope("POST", bearer="A"), ADMIN)[0]  # a script's key needs no origin


def test_a_proxys_basic_auth_leaves_the_cookie_in_charge() -> None:
    access = Access(Settings(admin_api_key="A"))
    token = access.sessions.issue(ADMIN)
    headers = [(b"authorization", b"Basic dXNlcjpwdw=="), (b"cookie", f"{COOKIE}={token}".encode())]
    assert access.role({"method": "GET", "headers": headers}) == (ADMIN, True)


def test_same_origin_needs_a_browsers_word() -> None:
    assert same_origin([(b"sec-fetch-site", b"same-origin")])
    assert not same_origin([(b"host", b"gw")])


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_are_signed_expire_can_be_signed_out_and_end_with_a_key_change() -> None:
    clock = Clock()
    sessions = Sessions(["A"], lifetime=60, clock=clock)
    token = sessions.issue(ADMIN)
    assert sessions.role(token) == ADMIN
    assert Sessions(["A"], clock=clock).role(token) == ADMIN  # another worker with the same keys knows it
    assert Sessions(["B"], clock=clock).role(token) is None  # the key changed: signed out
    forged = token.rsplit(".", 2)[0] + ".admin." + token.rsplit(".", 1)[1]
    assert sessions.role(token.replace(".admin.", ".view.")) is None and sessions.role(forged + "x") is None
    assert sessions.role("") is None and sessions.role("a.b") is None and sessions.role("x" * 300) is None
    other = sessions.issue(VIEW)
    sessions.sign_out(token)
    assert sessions.role(token) is None and sessions.role(other) == VIEW
    clock.now += 61
    assert sessions.role(other) is None

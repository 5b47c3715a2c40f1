"""Registry auth: WWW-Authenticate parsing, credentials from --creds and the Docker config,
the per-scope token cache; and, over an in-memory transport, the client's challenge flow,
retries, its choice of HTTP or HTTPS, and the referrers API of registries that have it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from ketch.config import RegistryOptions
from ketch.errors import StorageError, UsageError
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest
from ketch.storage.registry.auth import (
    Authenticator,
    Challenge,
    Credentials,
    credentials_from_docker_config,
    docker_config_path,
    find_credentials,
    parse_challenges,
    parse_creds,
    pull_scope,
    push_scope,
    registry_key,
)
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.store import RegistryStore
from ketch.storage.registry.transport import is_loopback

# -- WWW-Authenticate -----------------------------------------------------------------


def test_bearer_challenge_as_distribution_writes_it() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:team/app:pull,push",
            },
        )
    ]


def test_challenge_with_several_scopes_and_error() -> None:
    header = (
        'Bearer realm="http://127.0.0.1:1/token", service="s", '
        'scope="repository:a:pull,push repository:b:pull", error="insufficient_scope"'
    )
    (challenge,) = parse_challenges(header)
    assert challenge.scopes == ["repository:a:pull,push", "repository:b:pull"]
    assert challenge.params["error"] == "insufficient_scope"


def test_several_challenges_unquoted_values_escapes_and_case() -> None:
    header = 'Basic realm="say \\"hi\\", ok", BEARER realm=https://a/t,service=svc'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": 'say "hi", ok'}),
        Challenge("bearer", {"realm": "https://a/t", "service": "svc"}),
    ]


@pytest.mark.parametrize("header", ["", "   ", ","])
def test_empty_challenge(header: str) -> None:
    assert parse_challenges(header) == []


def test_challenge_scheme_without_params() -> None:
    assert parse_challenges("Negotiate") == [Challenge("negotiate", {})]


# -- credentials ----------------------------------------------------------------------


def test_creds_split_at_the_first_colon() -> None:
    creds = parse_creds("alice:pa:ss")
    assert creds == Credentials("alice", "pa:ss")
    assert "pa:ss" not in repr(creds)
    assert creds.basic_header() == "Basic " + base64.b64encode(b"alice:pa:ss").decode()


@pytest.mark.parametrize("text", ["alice", ":secret", ""])
def test_creds_need_user_and_colon(text: str) -> None:
    with pytest.raises(UsageError, match="USER:PASSWORD"):
        parse_creds(text)


def _config(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_config_auth_field(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {
            "other.example": {"auth": _b64("x:y")},
            "https://reg.example:5000/v1/": {"auth": _b64("bob:s3:cret")},
        },
    )
    assert credentials_from_docker_config("reg.example:5000", path) == Credentials("bob", "s3:cret")
    assert credentials_from_docker_config("reg.example", path) is None


def test_docker_config_username_password_fields_and_hub_aliases(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {"https://index.docker.io/v1/": {"username": "carol", "password": "pw"}},
    )
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert credentials_from_docker_config(name, path) == Credentials("carol", "pw")


def test_docker_config_entry_without_secrets(tmp_path: Path) -> None:
    path = _config(tmp_path, {"reg.example": {"identitytoken": "opaque"}})
    assert credentials_from_docker_config("reg.example", path) is None


def test_missing_docker_config_means_anonymous(tmp_path: Path) -> None:
    assert credentials_from_docker_config("reg.example", tmp_path / "none.json") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "JSON object"),
        ('{"auths": []}', "auths: expected an object"),
        ('{"auths": {"reg.example": {"auth": "!!!"}}}', "base64"),
        ('{"auths": {"reg.example": {"auth": "' + _b64("nocolon") + '"}}}', "no ':'"),
    ],
)
def test_broken_docker_config_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        credentials_from_docker_config("reg.example", path)
    assert str(path) in str(info.value)


def test_docker_config_path_follows_docker_config_env(tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path / "config.json"
    assert docker_config_path({"HOME": "/home/u"}) == Path("/home/u/.docker/config.json")


def test_creds_win_over_the_docker_config(tmp_path: Path) -> None:
    path = _config(tmp_path, {"reg.example": {"auth": _b64("file:user")}})
    assert find_credentials("reg.example", "cli:user", path) == Credentials("cli", "user")
    assert find_credentials("reg.example", None, path) == Credentials("file", "user")


def test_registry_key() -> None:
    assert registry_key("https://Reg.Example:5000/v2/") == "reg.example:5000"
    assert registry_key("http://localhost:5000") == "localhost:5000"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("reg.example:5000", False),
        ("10.0.0.1:5000", False),
        ("[2001:db8::1]:443", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- the token cache ------------------------------------------------------------------

BEARER = 'Bearer realm="http://auth.test/token",service="svc"'


class FakeIssuer:
    def __init__(self, lifetime: float = 300.0) -> None:
        self.calls: list[tuple[str, str | None, list[str], Credentials | None]] = []
        self.lifetime = lifetime

    def __call__(
        self, realm: str, service: str | None, scopes: list[str], creds: Credentials | None
    ) -> tuple[str, float]:
        self.calls.append((realm, service, scopes, creds))
        return f"token-{len(self.calls)}", self.lifetime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_cached_per_scope() -> None:
    issuer = FakeIssuer()
    auth = Authenticator("reg", Credentials("u", "p"), issuer)
    auth.learn(BEARER)
    first = auth.authorization(pull_scope("a"))
    assert first == "Bearer token-1"
    assert auth.authorization(pull_scope("a")) == first
    assert auth.authorization(push_scope("a")) == "Bearer token-2"
    assert auth.authorization(pull_scope("b")) == "Bearer token-3"
    assert auth.authorization(pull_scope("a")) == first
    assert [c[2] for c in issuer.calls] == [
        ["repository:a:pull"],
        ["repository:a:pull,push"],
        ["repository:b:pull"],
    ]
    assert issuer.calls[0][:2] == ("http://auth.test/token", "svc")
    assert issuer.calls[0][3] == Credentials("u", "p")


def test_expired_tokens_are_fetched_again() -> None:
    issuer, clock = FakeIssuer(lifetime=60), Clock()
    auth = Authenticator("reg", None, issuer, clock=clock)
    auth.learn(BEARER)
    assert auth.authorization("repository:a:pull") == "Bearer token-1"
    clock.now += 55  # within the expiry margin
    assert auth.authorization("repository:a:pull") == "Bearer token-2"
    clock.now += 5
    assert auth.authorization("repository:a:pull") == "Bearer token-2"


def test_a_challenge_for_more_scopes_fetches_them() -> None:
    issuer = FakeIssuer()
    auth = Authenticator("reg", None, issuer)
    auth.learn(BEARER)
    scope = "repository:a:pull,push repository:b:pull"
    sent = auth.authorization(scope)
    wider = BEARER + ',scope="repository:a:pull,push repository:b:pull repository:c:pull"'
    auth.challenged(wider, scope, sent)
    assert issuer.calls[-1][2] == [
        "repository:a:pull,push",
        "repository:b:pull",
        "repository:c:pull",
    ]
    assert auth.authorization(scope) == "Bearer token-2"


def test_a_refused_token_is_a_usage_error() -> None:
    auth = Authenticator("reg", Credentials("u", "p"), FakeIssuer())
    auth.learn(BEARER)
    sent = auth.authorization("repository:a:pull")
    with pytest.raises(UsageError, match=r"refused a token .* as 'u'; check --creds"):
        auth.challenged(BEARER + ',scope="repository:a:pull"', "repository:a:pull", sent)


def test_first_bearer_challenge_without_a_ping() -> None:
    issuer = FakeIssuer()
    auth = Authenticator("reg", None, issuer)
    assert auth.authorization("repository:a:pull") is None
    auth.challenged(BEARER + ',scope="repository:a:pull"', "repository:a:pull", None)
    assert auth.authorization("repository:a:pull") == "Bearer token-1"
    assert len(issuer.calls) == 1


def test_basic_challenge() -> None:
    creds = Credentials("u", "p")
    auth = Authenticator("reg", creds, FakeIssuer())
    auth.challenged('Basic realm="r"', "repository:a:pull", None)
    assert auth.authorization("repository:a:pull") == creds.basic_header()
    with pytest.raises(UsageError, match="refused the credentials as 'u'"):
        auth.challenged('Basic realm="r"', "repository:a:pull", creds.basic_header())


def test_basic_challenge_without_credentials() -> None:
    auth = Authenticator("reg", None, FakeIssuer())
    with pytest.raises(UsageError, match="requires credentials; give --creds"):
        auth.challenged('Basic realm="r"', "repository:a:pull", None)


def test_unknown_challenge() -> None:
    auth = Authenticator("reg", None, FakeIssuer())
    with pytest.raises(UsageError, match="expected Basic or Bearer"):
        auth.challenged("Negotiate", "repository:a:pull", None)


# -- the client's challenge flow, in memory -------------------------------------------


class FakeRegistry:
    """A registry needing a bearer token for repository ``a``, with its token server."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.token_requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "auth.test":
            self.token_requests += 1
            if request.headers.get("Authorization") != Credentials("u", "p").basic_header():
                return httpx.Response(401)
            return httpx.Response(200, json={"token": "T", "expires_in": 300})
        challenge = 'Bearer realm="https://auth.test/token",service="svc"'
        if request.headers.get("Authorization") != "Bearer T":
            scope = ',scope="repository:a:pull"' if request.url.path != "/v2/" else ""
            return httpx.Response(401, headers={"WWW-Authenticate": challenge + scope})
        if request.url.path.startswith("/v2/a/blobs/"):
            # Blob reads go to an object store, as registries on S3 or GCS do.
            return httpx.Response(307, headers={"Location": "https://objects.test/blob?sig=1"})
        return httpx.Response(200)


def _client(handler: FakeRegistry | httpx.MockTransport, **options: object) -> RegistryClient:
    transport = (
        handler if isinstance(handler, httpx.MockTransport) else httpx.MockTransport(handler)
    )
    return RegistryClient(
        "reg.test",
        RegistryOptions(**options),  # type: ignore[arg-type]
        transport=transport,
        sleep=lambda seconds: None,
    )


def test_token_flow_and_no_authorization_to_another_host() -> None:
    registry = FakeRegistry()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "objects.test":
            registry.requests.append(request)
            return httpx.Response(206, content=b"abc", headers={"Content-Range": "bytes 0-2/3"})
        return registry(request)

    with _client(httpx.MockTransport(handler), creds="u:p") as client:
        assert client.read_range("a", "sha256:" + "0" * 64, 0, 3) == b"abc"
        assert client.read_range("a", "sha256:" + "0" * 64, 0, 3) == b"abc"
    assert registry.token_requests == 1  # cached for the second read
    to_objects = [r for r in registry.requests if r.url.host == "objects.test"]
    assert len(to_objects) == 2
    assert all("Authorization" not in r.headers for r in to_objects)
    assert all(r.headers["Range"] == "bytes=0-2" for r in to_objects)
    assert registry.requests[0].url == "https://reg.test/v2/"


def test_wrong_password_at_the_token_server() -> None:
    with (
        _client(FakeRegistry(), creds="u:wrong") as client,
        pytest.raises(UsageError, match=r"docker://reg.test/a: blob .*token server refused"),
    ):
        client.blob_size("a", "sha256:" + "0" * 64)


def test_retries_then_gives_up_naming_what() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(503)

    with (
        _client(httpx.MockTransport(handler), retries=2) as client,
        pytest.raises(
            StorageError, match=r"docker://reg.test/a: blob sha256:0+: .*503.*3 attempts"
        ),
    ):
        client.read_blob("a", "sha256:" + "0" * 64)
    assert len(calls) == 1 + 3


def test_backoff_grows_and_honours_retry_after_up_to_a_cap() -> None:
    client = RegistryClient("reg.test", RegistryOptions(backoff=1.0, max_retry_wait=5.0))
    try:
        waits = [client.backoff(n) for n in range(5)]
        assert 0.5 <= waits[0] <= 1.0
        assert 2.0 <= waits[2] <= 4.0
        assert waits[4] <= 5.0
        assert client.backoff(0, retry_after=3.0) == 3.0
        assert client.backoff(0, retry_after=60.0) == 5.0
    finally:
        client.close()


# -- transport choices and the referrers API, in memory -----------------------------------


def test_loopback_is_plain_http_and_elsewhere_https() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    for host in ("127.0.0.1:5000", "reg.test"):
        client = RegistryClient(host, transport=httpx.MockTransport(handler))
        client.ping()
        client.close()
    assert seen == ["http://127.0.0.1:5000/v2/", "https://reg.test/v2/"]


def test_tls_verify_false_falls_back_to_http() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.scheme == "https":
            raise httpx.ConnectError("wrong version number", request=request)
        return httpx.Response(200)

    with _client(httpx.MockTransport(handler), tls_verify=False) as client:
        client.ping()
        assert client.base_url == "http://reg.test"
    assert seen == ["https://reg.test/v2/", "http://reg.test/v2/"]
    with (
        _client(httpx.MockTransport(handler), retries=0) as verified,
        pytest.raises(StorageError, match=r"https://reg.test/v2/: connection failed"),
    ):
        verified.ping()  # verified TLS never falls back to plain HTTP


def test_a_bad_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UsageError, match=r"ca.pem: cannot load CA certificates"):
        RegistryClient("reg.test", RegistryOptions(ca_file=bad))


def _index(*entries: tuple[str, str]) -> dict[str, object]:
    """An OCI index of manifests ``(digest, artifactType)``."""
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {"mediaType": mt.OCI_MANIFEST, "digest": d, "size": 10, "artifactType": kind}
            for d, kind in entries
        ],
    }


def test_referrers_api_with_pages_and_filter() -> None:
    subject = "sha256:" + "a" * 64
    first, second, other = ("sha256:" + c * 64 for c in "bcd")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        assert request.url.path == f"/v2/app/referrers/{subject}"
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json=_index((second, "x/test")))
        link = f'</v2/app/referrers/{subject}?page=2>; rel="next"'
        page = _index((first, "x/test"), (other, "x/other"))
        return httpx.Response(200, json=page, headers={"Link": link})

    with _client(httpx.MockTransport(handler)) as client:
        assert [d.digest for d in client.referrers("app", subject)] == [first, other, second]
        assert [d.digest for d in client.referrers("app", subject, "x/other")] == [other]


def test_a_registry_with_the_referrers_api_gets_no_fallback_tag() -> None:
    puts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            puts.append(request.url.path)
            return httpx.Response(201, headers={"OCI-Subject": "sha256:" + "a" * 64})
        return httpx.Response(200)

    subject = Descriptor(mt.OCI_MANIFEST, "sha256:" + "a" * 64, 100)
    config = Descriptor(mt.OCI_CONFIG, "sha256:" + "b" * 64, 2)
    data = Manifest(mt.OCI_MANIFEST, config, [], {}, subject).to_bytes()
    store = RegistryStore(_client(httpx.MockTransport(handler)), "app")
    store.put_manifest(data, mt.OCI_MANIFEST, "v1")
    store.close()
    assert puts == ["/v2/app/manifests/v1"]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"auths": ' + "9" * 5000 + "}"])
def test_a_hostile_docker_config_is_one_usage_error(tmp_path: Path, text: str) -> None:
    from ketch.storage.registry.auth import credentials_from_docker_config  # noqa: PLC0415

    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(UsageError) as raised:
        credentials_from_docker_config("registry.example", config)
    assert "\n" not in raised.value.message and str(config) in raised.value.message

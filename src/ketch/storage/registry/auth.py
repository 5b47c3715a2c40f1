"""Registry credentials and the auth challenge flow of the distribution spec.

Where credentials come from, in order: ``--creds USER:PASS``, then the Docker config file
(``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``; its ``auths`` map, each
entry a base64 ``auth`` of ``user:password`` or ``username``/``password`` fields), else none
(anonymous).

How they are used: the first request to a registry (``GET /v2/``) tells the scheme.

- no challenge: anonymous;
- ``WWW-Authenticate: Basic realm=...``: every request carries ``Authorization: Basic``;
- ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``: a token is fetched from
  the realm (with the basic credentials, if any) for each scope a request needs
  (``repository:NAME:pull``, ``repository:NAME:pull,push``, ...), cached per scope until
  it expires, and sent as ``Authorization: Bearer``.

A request that is refused (401) is retried once with fresh credentials for the scope the
challenge names; refused again, it is a ``UsageError`` with a hint. This module does no
HTTP itself: the client hands ``Authenticator`` a function that fetches a token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ketch.errors import UsageError
from ketch.oci.reference import canonical_registry

#: a token without ``expires_in`` lives this long (distribution spec, token auth)
DEFAULT_TOKEN_LIFETIME = 60.0
#: a cached token this close to expiry is fetched again
TOKEN_EXPIRY_MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_creds(text: str) -> Credentials:
    """``USER:PASS`` as skopeo's ``--creds`` takes it (the password may hold colons)."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise UsageError("--creds: expected USER:PASSWORD, found no 'USER:' part")
    return Credentials(username, password)


# -- the Docker config file -----------------------------------------------------------


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json`` (a directory, as Docker reads it) or ``~/.docker``."""
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def registry_key(name: str) -> str:
    """How a config.json key or a registry name compares: host[:port], no scheme, no path."""
    host = name.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    return canonical_registry(host.split("/", 1)[0])


def credentials_from_docker_config(registry: str, path: Path) -> Credentials | None:
    """The credentials ``path`` (a Docker config.json) holds for ``registry``, if any.

    A missing file means none; a file that is not a config is a UsageError naming it.
    Entries kept by a credential helper (``credsStore``/``credHelpers``) are not read.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the Docker config: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # a 4300-digit number, nesting too deep
        raise UsageError(
            f"{path}: expected a Docker config (JSON), found invalid JSON: {exc!r}"
        ) from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a Docker config (a JSON object)")
    auths = doc.get("auths")
    if auths is None:
        return None
    if not isinstance(auths, dict):
        raise UsageError(f"{path}: auths: expected an object, found {type(auths).__name__}")
    wanted = registry_key(registry)
    for key, entry in auths.items():
        if registry_key(key) != wanted or not isinstance(entry, dict):
            continue
        return _entry_credentials(entry, f"{path}: auths[{key!r}]")
    return None


def _entry_credentials(entry: dict[str, object], where: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise UsageError(f"{where}.auth: expected base64 of USER:PASSWORD") from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise UsageError(f"{where}.auth: expected base64 of USER:PASSWORD, found no ':'")
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(secret, str):
        return Credentials(user, secret)
    return None


def find_credentials(
    registry: str, creds: str | None = None, docker_config: Path | None = None
) -> Credentials | None:
    """``creds`` if given, else what the Docker config holds for ``registry``."""
    if creds is not None:
        return parse_creds(creds)
    return credentials_from_docker_config(registry, docker_config or docker_config_path())


# -- WWW-Authenticate -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer", ...
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge of a ``WWW-Authenticate`` value (RFC 9110 §11.6.1):
    ``Scheme k=v, k="quoted, with \\"escapes\\"", Other-Scheme ...``."""
    challenges: list[Challenge] = []
    pos, n = 0, len(header)
    current: Challenge | None = None
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        start = pos
        while pos < n and header[pos] not in " \t,=":
            pos += 1
        token = header[start:pos]
        if not token:
            break
        look = pos
        while look < n and header[look] in " \t":
            look += 1
        if look < n and header[look] == "=" and current is not None:
            # An auth-param of the current challenge.
            pos = look + 1
            while pos < n and header[pos] in " \t":
                pos += 1
            value, pos = _param_value(header, pos)
            current.params[token.lower()] = value
            continue
        current = Challenge(token.lower(), {})
        challenges.append(current)
        pos = look
    return challenges


def _param_value(header: str, pos: int) -> tuple[str, int]:
    n = len(header)
    if pos < n and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < n and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < n:
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    start = pos
    while pos < n and header[pos] not in " \t,":
        pos += 1
    return header[start:pos], pos


# -- the authenticator ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float
    scopes: tuple[str, ...]


#: ``fetch(realm, service, scopes, credentials) -> (token, lifetime seconds)``
TokenFetcher = Callable[[str, str | None, list[str], Credentials | None], tuple[str, float]]


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Authenticator:
    """What a request to one registry carries for a scope: nothing, Basic, or a token."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials | None,
        fetch_token: TokenFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self._fetch_token = fetch_token
        self._clock = clock
        self._lock = threading.Lock()
        self._scheme: str | None = None  # None (anonymous so far), "basic", "bearer"
        self._bearer: Challenge | None = None
        self._tokens: dict[str, Token] = {}
        self.tokens_fetched = 0

    @property
    def scheme(self) -> str | None:
        return self._scheme

    def authorization(self, scope: str) -> str | None:
        """The ``Authorization`` value for a request needing ``scope``, or None."""
        if self._scheme == "basic" and self.credentials:
            return self.credentials.basic_header()
        if self._scheme == "bearer":
            return "Bearer " + self._token(scope, scope.split()).value
        return None

    def challenged(self, header: str | None, scope: str, sent: str | None) -> None:
        """A request needing ``scope`` was answered 401 with ``header``: get what the
        retry needs, or raise UsageError if there is nothing new to try."""
        challenges = parse_challenges(header or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        who = f"as {self.credentials.username!r}" if self.credentials else "anonymously"
        if bearer is not None:
            scopes = bearer.scopes or scope.split()
            with self._lock:
                self._scheme, self._bearer = "bearer", bearer
                old = self._tokens.get(scope)
            if (
                sent is not None
                and old is not None
                and sent == "Bearer " + old.value
                and set(scopes) <= set(old.scopes)
            ):
                raise self._denied(f"the registry refused a token for {' '.join(scopes)} {who}")
            with self._lock:
                self._tokens.pop(scope, None)
            self._token(scope, scopes)
            return
        if basic is not None:
            if self.credentials is None:
                raise self._denied("the registry requires credentials")
            if sent is not None and sent.lower().startswith("basic "):
                raise self._denied(f"the registry refused the credentials {who}")
            with self._lock:
                self._scheme = "basic"
            return
        raise self._denied(
            f"the registry refused access {who} "
            f"(challenge: {header!r}; expected Basic or Bearer realm=...)"
        )

    def learn(self, header: str | None) -> None:
        """Record the scheme from a ping's 401, without fetching anything yet."""
        challenges = parse_challenges(header or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        with self._lock:
            if bearer is not None:
                self._scheme, self._bearer = "bearer", bearer
            elif any(c.scheme == "basic" for c in challenges) and self.credentials:
                self._scheme = "basic"

    def forget(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)

    def _token(self, key: str, scopes: list[str]) -> Token:
        now = self._clock()
        with self._lock:
            token = self._tokens.get(key)
            bearer = self._bearer
        if token is not None and token.expires_at - TOKEN_EXPIRY_MARGIN > now:
            return token
        if bearer is None or bearer.realm is None:
            raise self._denied("no token realm is known")
        value, lifetime = self._fetch_token(
            bearer.realm, bearer.params.get("service"), scopes, self.credentials
        )
        token = Token(value, now + max(lifetime, 0.0), tuple(scopes))
        with self._lock:
            self._tokens[key] = token
            self.tokens_fetched += 1
        return token

    def _denied(self, what: str) -> UsageError:
        hint = (
            "check --creds USER:PASSWORD or the Docker config"
            if self.credentials
            else "give --creds USER:PASSWORD or log in (docker login writes ~/.docker/config.json)"
        )
        return UsageError(f"{what}; {hint}")

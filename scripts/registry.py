#!/usr/bin/env python3
"""A real OCI registry on loopback for tests, CI and demos: Debian's ``docker-registry``
(CNCF distribution 2.8) with a generated configuration, in one of four modes.

- ``plain``: anonymous, read and write.
- ``basic``: htpasswd basic auth (a bcrypt htpasswd file, the only hash distribution reads).
- ``token``: bearer token auth (``auth.token``). Its realm is a small token issuer run
  here, on another loopback port: it checks basic credentials, grants every action a
  scope asks for to a known user (an anonymous or failed asker gets a 401), and signs an
  RS256 JWT with a generated key whose self-signed certificate travels in the JWT header
  (``x5c``) and is the registry's ``rootcertbundle``. The claims are distribution's
  (``registry/auth/token/token.go``): ``iss`` (the registry's ``issuer``), ``sub``,
  ``aud`` (its ``service``, one string), ``exp``/``nbf``/``iat``, ``jti`` and
  ``access: [{type, name, actions}]``.
- ``mirror``: anonymous and read-only, a pull-through cache (``proxy.remoteurl``) of the
  registry at ``--remote-url``: it serves that registry's repositories under the same
  names, fetching a blob from it on first request and from its own storage after. A
  cold blob is sent whole (distribution ignores ``Range`` until it has stored it). It
  asks the remote for ``/v2/`` as it starts and exits if the remote does not answer.

As a script it starts the registry, prints one JSON line (``url``, ``host``, ``mode``,
``username``, ``password``) once ``/v2/`` answers, and serves until SIGINT or SIGTERM::

    .venv/bin/python scripts/registry.py [--mode plain|basic|token] [--dir DIR]
    .venv/bin/python scripts/registry.py --mode mirror --remote-url http://127.0.0.1:PORT
    skopeo copy oci:.cache/corpus/oci:py1 docker://127.0.0.1:PORT/corpus:py1 --dest-tls-verify=false

As a module (``tests/fixtures/registry.py``), :class:`RegistryServer` is a context manager
whose ``start()`` returns a :class:`RunningRegistry` once the registry answers, or raises
``RegistryServerError`` with the tail of its log. Storage lives in a temporary directory
(or ``--dir``) and is removed when a temporary one is stopped. ``terminate()`` ends the
registry process alone (a crash, for tests) and ``restart()`` serves the same storage on
the same port again.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

try:
    from scripts.foreground import Started, serve_until_signal
except ModuleNotFoundError:  # run as a file: its own directory is on sys.path
    from foreground import Started, serve_until_signal  # type: ignore[import-not-found,no-redef]

MODES = ("plain", "basic", "token", "mirror")
REGISTRY_BINARY = "docker-registry"
TOKEN_SERVICE = "ketch-test-registry"  # noqa: S105 - a name, not a secret
TOKEN_ISSUER = "ketch-test-token-issuer"  # noqa: S105 - a name, not a secret
TOKEN_LIFETIME = 300
DEFAULT_USERNAME = "ketch"
START_TIMEOUT = 30.0
LOG_TAIL_LINES = 30


class RegistryServerError(Exception):
    """The registry or its token issuer could not start."""


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    mode: str
    host: str  # 127.0.0.1:PORT, as an image reference names it
    url: str  # http://127.0.0.1:PORT
    root: Path  # storage, config and log
    username: str | None
    password: str | None
    token_url: str | None  # the token issuer's realm (token mode)
    remote_url: str | None = None  # the registry a mirror caches (mirror mode)

    @property
    def creds(self) -> str | None:
        """``USER:PASSWORD`` as ``--creds`` takes it, or None for the plain registry."""
        return f"{self.username}:{self.password}" if self.username else None

    def to_json(self) -> dict[str, str | None]:
        return {
            "mode": self.mode,
            "host": self.host,
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "token_url": self.token_url,
            "remote_url": self.remote_url,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the token issuer ---------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """A loopback token server for distribution's ``auth.token`` (docs/spec/auth/token.md)."""

    def __init__(self, users: dict[str, str], service: str = TOKEN_SERVICE) -> None:
        self.users = users
        self.service = service
        self.issued = 0
        self.refused = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def start(self) -> str:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-issuer", daemon=True
        )
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        query = parse_qsl(urlsplit(request.path).query)
        params = dict(query)
        user = self._authenticate(request.headers.get("Authorization"))
        if user is None:
            self.refused += 1
            _send(request, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
            return
        scopes = [value for key, value in query if key == "scope"]
        token = self.token(user, params.get("service", self.service), scopes)
        self.issued += 1
        issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _send(
            request,
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME,
                "issued_at": issued_at,
            },
        )

    def _authenticate(self, header: str | None) -> str | None:
        """The user a Basic header proves, or None (anonymous askers are refused too)."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        known = self.users.get(user)
        if known is None or not secrets.compare_digest(known, password):
            return None
        return user

    def token(self, user: str, audience: str, scopes: list[str]) -> str:
        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": audience,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode("ascii")]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


def _send(request: BaseHTTPRequestHandler, status: int, doc: object) -> None:
    body = json.dumps(doc).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(body)))
    if status == 401:
        request.send_header("WWW-Authenticate", 'Basic realm="ketch-test-token-issuer"')
    request.end_headers()
    request.wfile.write(body)


# -- the registry ---------------------------------------------------------------------------


class RegistryServer(Started[RunningRegistry]):
    """``docker-registry serve`` on a free loopback port, configured for one auth mode."""

    def __init__(
        self,
        mode: str = "plain",
        root: Path | None = None,
        *,
        username: str = DEFAULT_USERNAME,
        password: str | None = None,
        remote_url: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if (mode == "mirror") != (remote_url is not None):
            raise ValueError(
                f"mode {mode!r}: a remote URL goes with mode 'mirror' and only with it, "
                f"found {remote_url!r}"
            )
        self.mode = mode
        self.remote_url = remote_url.rstrip("/") if remote_url else None
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="ketch-registry-"))
        with_auth = mode in ("basic", "token")
        self.username = username if with_auth else None
        self.password = (password or secrets.token_urlsafe(12)) if with_auth else None
        self.port: int | None = None
        self.issuer: TokenIssuer | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.running: RunningRegistry | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "registry.log"

    def start(self, timeout: float = START_TIMEOUT) -> RunningRegistry:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RegistryServerError(
                f"{REGISTRY_BINARY}: expected on PATH, not found; "
                "run scripts/install-system-deps.sh (Debian package docker-registry)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        token_url = None
        auth: dict[str, object] | None = None
        if self.mode == "basic":
            assert self.username is not None and self.password is not None
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(f"{self.username}:{hashed}\n")
            auth = {"htpasswd": {"realm": "ketch-test-registry", "path": str(htpasswd)}}
        elif self.mode == "token":
            assert self.username is not None and self.password is not None
            self.issuer = TokenIssuer({self.username: self.password})
            bundle = self.root / "token-root.pem"
            bundle.write_bytes(self.issuer.certificate_pem)
            token_url = self.issuer.start()
            auth = {
                "token": {
                    "realm": token_url,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(bundle),
                }
            }
        last_error = "not started"
        for _ in range(3):  # a port found free may be taken before the registry binds it
            port = free_port()
            self._write_config(port, auth)
            try:
                self._launch(binary, port, timeout)
                self.port = port
            except RegistryServerError as exc:
                last_error = str(exc)
                self._terminate()
                if "address already in use" in last_error:
                    continue
                self.stop()
                raise
            host = f"127.0.0.1:{port}"
            self.running = RunningRegistry(
                self.mode,
                host,
                f"http://{host}",
                self.root,
                self.username,
                self.password,
                token_url,
                self.remote_url,
            )
            return self.running
        self.stop()
        raise RegistryServerError(last_error)

    def _write_config(self, port: int, auth: dict[str, object] | None) -> None:
        # JSON is YAML: the registry reads it as its configuration file.
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if auth is not None:
            config["auth"] = auth
        if self.remote_url is not None:
            config["proxy"] = {"remoteurl": self.remote_url}
        (self.root / "config.yml").write_text(json.dumps(config, indent=2) + "\n")

    def _launch(self, binary: str, port: int, timeout: float) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "serve", str(self.root / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RegistryServerError(
                    f"{REGISTRY_BINARY} exited with {self.process.returncode} before "
                    f"answering; last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if _answers(port):
                return
            time.sleep(0.05)
        raise RegistryServerError(
            f"{REGISTRY_BINARY} did not answer GET /v2/ on 127.0.0.1:{port} within "
            f"{timeout:.0f}s; last lines of {self.log_file}:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def terminate(self, *, kill: bool = False) -> None:
        """End the registry process (SIGTERM, or SIGKILL with ``kill``) and keep its
        storage and port, as a crash would; ``restart()`` brings it back."""
        if kill and self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._terminate()

    def restart(self, timeout: float = START_TIMEOUT) -> RunningRegistry:
        """Serve the same storage and configuration on the same port again."""
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None or self.port is None or self.running is None:
            raise RegistryServerError("restart: the registry was never started")
        self._terminate()
        deadline = time.monotonic() + timeout
        while True:  # the port may linger a moment after the old process ends
            try:
                self._launch(binary, self.port, timeout)
            except RegistryServerError as exc:
                self._terminate()
                if "address already in use" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise
            return self.running

    def stop(self) -> None:
        self._terminate()
        if self.issuer is not None:
            self.issuer.stop()
            self.issuer = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _answers(port: int) -> bool:
    """Whether a registry answers ``GET /v2/`` (200, or 401 with auth) on the port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/v2/")
        status = connection.getresponse().status
    except OSError:
        return False
    finally:
        connection.close()
    return status in (200, 401)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=MODES, default="plain")
    parser.add_argument("--dir", type=Path, help="storage, config and log (default: temporary)")
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--password", help="default: random")
    parser.add_argument("--remote-url", help="the registry a mirror caches (mode mirror)")
    args = parser.parse_args(argv)
    if (args.mode == "mirror") != (args.remote_url is not None):
        parser.error("--remote-url goes with --mode mirror, and --mode mirror needs it")
    server = RegistryServer(
        args.mode,
        args.dir,
        username=args.username,
        password=args.password,
        remote_url=args.remote_url,
    )
    try:
        running = server.start()
    except RegistryServerError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(running.to_json()), flush=True)
    return serve_until_signal(
        lambda: server.process is not None and server.process.poll() is None,
        server.stop,
        "registry",
    )


if __name__ == "__main__":
    sys.exit(main())

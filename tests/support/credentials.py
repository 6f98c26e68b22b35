"""Real-looking service-account keys and a local OAuth token endpoint that accepts them.

The key is a freshly generated RSA key: google-auth signs a real JWT with it and posts it to ``token_uri``,
which points at :class:`TokenEndpoint` on 127.0.0.1 instead of oauth2.googleapis.com. That exercises the
production credential path (keyfile_dict → signed assertion → bearer token) with no Google account, and gives
the secret-scanning tests key material worth looking for.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.api_contract import LOG as CONTRACT_LOG
from tests.support.api_contract import check_request, check_token_request

ISSUED_TOKEN_PREFIX = "ya29.local-token-"


class TokenEndpoint:
    """An OAuth token endpoint that answers every grant (a service account's JWT bearer, a user's refresh token)
    with a fresh access token.

    ``issued`` lists every access token handed out: they are secrets too, so the scanning tests look for each;
    ``grants_seen`` holds each request's form (grant_type, and client_id/refresh_token for a refresh grant).
    With ``refuse`` set it answers like Google does for a revoked or unknown key (HTTP 400 ``invalid_grant``).
    """

    def __init__(self, refuse: bool = False) -> None:
        self.grants = 0
        self.refusals = 0
        self.refuse = refuse
        self.issued: list[str] = []
        self.grants_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()  # the server answers each request on its own thread
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                CONTRACT_LOG.add("oauth2.token", check_token_request(
                    self.command, self.headers.get("Content-Type") or "", {k: v[0] for k, v in form.items()}))
                with owner._lock:
                    owner.grants_seen.append({k: v[0] for k, v in form.items()})
                    if owner.refuse:
                        owner.refusals += 1
                        status, payload = 400, {"error": "invalid_grant",
                                                "error_description": "Invalid JWT Signature."}
                    else:
                        owner.grants += 1
                        # Unique per endpoint and per grant: a token found in a log names the grant it came from.
                        token = f"{ISSUED_TOKEN_PREFIX}{owner.grants}-{secrets.token_urlsafe(24)}"
                        owner.issued.append(token)
                        status, payload = 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def tokens(self) -> list[str]:
        """A copy of the access tokens issued so far (safe to iterate while requests arrive)."""
        with self._lock:
            return list(self.issued)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def service_account_key(token_uri: str, project: str = "demo-proj") -> dict[str, str]:
    """A service-account key file's content with a newly generated private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": f"dbt-runner@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }


def secret_fragments(key: dict[str, str]) -> list[str]:
    """Substrings whose presence anywhere outside the connection means the key leaked."""
    body = [line for line in key["private_key"].splitlines() if line and not line.startswith("-----")]
    # Any full line of the PEM body is unmistakable; also look for the JSON-escaped form of the key.
    return [key["private_key_id"], *body[1:4], json.dumps(key["private_key"])[1:60], ISSUED_TOKEN_PREFIX]


class IamCredentialsEndpoint:
    """A local IAM Credentials API answering ``generateAccessToken`` with a delegated token.

    ``calls`` records, per call, the service account named in the path, the caller's Authorization header, the
    requested scopes and delegates; ``issued`` the delegated tokens (secrets for the scanning tests). With
    ``refuse`` set it answers as Google does when the caller lacks roles/iam.serviceAccountTokenCreator (403).
    """

    PREFIX = "ya29.delegated-"
    REFUSAL = ("Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")

    def __init__(self) -> None:
        self.refuse = False
        self.calls: list[dict[str, Any]] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                CONTRACT_LOG.record(check_request(self.command, self.path, raw, self.headers.get("Content-Type") or ""))
                body = json.loads(raw or b"{}")
                prefix, _, rest = self.path.partition("/v1/projects/-/serviceAccounts/")
                account, _, method = rest.partition(":")
                with owner._lock:
                    token = f"{owner.PREFIX}{len(owner.issued) + 1}-{secrets.token_urlsafe(16)}"
                    owner.issued.append(token)
                    owner.calls.append({"account": unquote(account), "method": method,
                                        "authorization": self.headers.get("Authorization", ""),
                                        "scope": body.get("scope"), "delegates": body.get("delegates")})
                ok = not prefix and method == "generateAccessToken"
                if ok and owner.refuse:
                    status, payload = 403, {"error": {"code": 403, "message": owner.REFUSAL,
                                                      "status": "PERMISSION_DENIED"}}
                elif ok:
                    status, payload = 200, {"accessToken": token, "expireTime": "2999-01-01T00:00:00Z"}
                else:
                    status, payload = 404, {"error": {"code": 404, "message": "no such method"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""Tokens from an external identity provider: RS256 and EdDSA verified against its JWKS, issuer and
audience enforced, keys refetched when a token names an unknown key id (a rotation).

The provider is faked by a local HTTP server that speaks the real protocol: a JWKS document
(RFC 7517) over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from tests.support import TEST_SECRET, Web, token

ISSUER = "https://id.example.test/"
AUDIENCE = "chatq"


class FakeIdentityProvider:
    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                document = {"keys": [provider.public_jwk(kid) for kid in provider.published]}
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str, alg: str, publish: bool = True) -> None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
            else ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = (alg, private)
        if publish:
            self.published.append(kid)

    def public_jwk(self, kid: str) -> dict:
        alg, private = self.keys[kid]
        codec = RSAAlgorithm if alg == "RS256" else OKPAlgorithm
        jwk = json.loads(codec.to_jwk(private.public_key()))
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    def token(self, kid: str, user: str = "idp-user", **claims) -> str:
        alg, private = self.keys[kid]
        payload = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, **claims}
        return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def provider():
    fake = FakeIdentityProvider()
    fake.add_key("rsa-1", "RS256")
    fake.add_key("ed-1", "EdDSA")
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def idp_web(stack_env, provider):
    env = {**stack_env, "AUTH_JWKS_URL": provider.url, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE,
           "AUTH_JWKS_TTL_SECONDS": "300", "AUTH_JWKS_COOLDOWN_SECONDS": "1", "WEB_CONCURRENCY": "1"}
    node = Web("web-idp", env).start()
    yield node
    node.stop()


def _tasks(node: Web, bearer: str) -> requests.Response:
    return requests.get(node.url + "/api/v1/tasks", headers={"Authorization": f"Bearer {bearer}"}, timeout=10)


@pytest.mark.parametrize("kid", ["rsa-1", "ed-1"], ids=["RS256", "EdDSA"])
def test_provider_tokens_are_accepted(idp_web, provider, kid: str) -> None:
    assert _tasks(idp_web, provider.token(kid)).status_code == 200


@pytest.mark.parametrize(
    "claims", [{"iss": "https://evil.example/"}, {"aud": "someone-else"}, {"exp": int(time.time()) - 10}],
    ids=["wrong-issuer", "wrong-audience", "expired"],
)
def test_provider_tokens_with_wrong_claims_are_401(idp_web, provider, claims: dict) -> None:
    assert _tasks(idp_web, provider.token("rsa-1", **claims)).status_code == 401


def test_a_rotated_key_is_fetched_when_a_token_names_it(idp_web, provider) -> None:
    assert _tasks(idp_web, provider.token("rsa-1")).status_code == 200
    time.sleep(1.1)  # past the refetch cooldown (1 s here)
    before = provider.fetches
    provider.add_key("rsa-2", "RS256")
    assert _tasks(idp_web, provider.token("rsa-2")).status_code == 200
    assert provider.fetches > before
    cached = provider.fetches
    assert _tasks(idp_web, provider.token("rsa-2")).status_code == 200
    assert provider.fetches == cached  # known keys come from the cache (TTL), not a fetch per request
    provider.add_key("made-up", "RS256", publish=False)
    for _ in range(5):  # unknown key ids within the cooldown cost at most one fetch
        assert _tasks(idp_web, provider.token("made-up")).status_code == 401
    assert provider.fetches <= cached + 1


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def test_unpublished_keys_and_algorithm_confusion_are_401(idp_web, provider) -> None:
    provider.add_key("rogue", "RS256", publish=False)
    assert _tasks(idp_web, provider.token("rogue")).status_code == 401
    unsigned = jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none")
    assert _tasks(idp_web, unsigned).status_code == 401
    # The classic confusion attack: HS256 with the published RSA key's PEM as the HMAC secret, naming
    # that key, every other claim valid — refused because the key's kind decides the algorithm.
    # (PyJWT itself refuses to sign with a PEM as an HMAC secret, so it is signed by hand.)
    public_key = RSAAlgorithm.from_jwk(json.dumps(provider.public_jwk("rsa-1")))
    public_pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    signing_input = b".".join(_b64(json.dumps(part).encode()) for part in ({"alg": "HS256", "kid": "rsa-1",
                                                                             "typ": "JWT"}, claims))
    forged = (signing_input + b"." + _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())).decode()
    assert _tasks(idp_web, forged).status_code == 401
    assert _tasks(idp_web, provider.token("rsa-1")).status_code == 200  # the same claims, rightly signed


def test_a_token_whose_algorithm_does_not_fit_its_key_is_401(idp_web, provider) -> None:
    # An RS256 header naming the provider's Ed25519 key, and the reverse: the key's kind decides.
    _, rsa_private = provider.keys["rsa-1"]
    _, ed_private = provider.keys["ed-1"]
    claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    rsa_on_ed = jwt.encode(claims, rsa_private, algorithm="RS256", headers={"kid": "ed-1"})
    ed_on_rsa = jwt.encode(claims, ed_private, algorithm="EdDSA", headers={"kid": "rsa-1"})
    for bearer in (rsa_on_ed, ed_on_rsa):
        response = _tasks(idp_web, bearer)
        assert response.status_code == 401, response.text
        assert response.headers["Content-Type"] == "application/problem+json"


def test_hs256_tokens_still_work_beside_the_provider(idp_web) -> None:
    bearer = token("local-user", secret=TEST_SECRET, iss=ISSUER, aud=AUDIENCE)
    assert _tasks(idp_web, bearer).status_code == 200

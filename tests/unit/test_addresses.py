"""Where a webhook may go (models/policy/addresses.py), and the delivery's own check of the address it
connects to (worker/webhooks.py): a name that resolves to loopback at delivery time is refused."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from models import Settings
from models.policy.addresses import refused, url_problem
from worker.webhooks import _post, backoff

STRICT = Settings.from_env({"DATABASE_URL": "postgresql+psycopg://x/y", "REDIS_URL": "redis://x"})


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.8", "172.16.3.4", "192.168.1.1", "169.254.169.254",
                                     "::1", "fe80::1", "fd00:ec2::254", "224.0.0.1", "0.0.0.0",  # noqa: S104
                                     "::ffff:127.0.0.1",
                                     "100.64.0.1", "100.100.100.200",
                                     # 6to4 embedding 127.0.0.1 and 169.254.169.254, and 10.0.0.1
                                     "2002:7f00:1::", "2002:a9fe:a9fe::", "2002:a00:1::1",
                                     # Teredo whose client is 127.0.0.1 (stored inverted), NAT64 of 127.0.0.1
                                     "2001:0:4136:e378:8000:63bf:80ff:fffe", "64:ff9b::7f00:1",
                                     # not globally routable: benchmarking, documentation
                                     "198.18.0.1", "2001:db8::1"])
def test_internal_addresses_are_refused(address: str) -> None:
    assert refused(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8",
                                     "2002:808:808::1", "64:ff9b::808:808"])  # 6to4 and NAT64 of 8.8.8.8
def test_public_addresses_are_not(address: str) -> None:
    assert refused(ipaddress.ip_address(address)) is None


def test_urls_need_https_a_host_and_no_credentials() -> None:
    assert "https" in url_problem("http://93.184.216.34/hook", allow_private=False)
    assert "credentials" in url_problem("https://user:pw@93.184.216.34/hook", allow_private=False)
    assert "loopback" in url_problem("https://127.0.0.1:8443/hook", allow_private=False)
    assert url_problem("https://93.184.216.34/hook", allow_private=False) is None
    assert url_problem("http://127.0.0.1:9/hook", allow_private=True) is None  # development and tests
    # A label over 63 characters: refused by our check, before any resolver sees it.
    assert "not a valid host name" in url_problem(f"https://{'a' * 64}.example.com/hook", allow_private=False)


def test_a_name_resolving_to_loopback_at_delivery_time_is_not_called() -> None:
    attempt = _post(STRICT, "https://localhost:9/hook", {}, b"{}")
    assert attempt.status_code is None and attempt.error.startswith("refused: localhost resolves to")


def test_every_retry_waits_at_least_as_long_as_the_one_before() -> None:
    # While the delay doubles (below the cap), each is at least the one before; past it, between
    # half the cap and the cap.
    doubling = [n for n in range(20) if STRICT.webhook_backoff_base_seconds * 2 ** (n + 1)
                <= STRICT.webhook_backoff_cap_seconds]
    delays = [backoff(STRICT, failures) for failures in doubling]
    assert len(delays) >= 10 and all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert delays[0] <= STRICT.webhook_backoff_base_seconds and delays[-1] <= STRICT.webhook_backoff_cap_seconds
    # Retried for at least a day before a delivery is given up.
    assert STRICT.webhook_give_up_seconds >= 24 * 3600

"""Association admission: auth's decision (deny by default) and the listener's cache of it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from edge.auth.handlers import address_matches, admit
from edge.auth.registry import RemoteAE
from edge.common.admission import Admission
from edge.listener.admission import AdmissionCache

STORE_FIND = frozenset({"store", "find"})


class DictRegistry:
    def __init__(self, *aes: RemoteAE) -> None:
        self.aes = {ae.ae_title: ae for ae in aes}
        self.lookups: list[str] = []

    async def get(self, ae_title: str) -> RemoteAE | None:
        self.lookups.append(ae_title)
        return self.aes.get(ae_title)


def remote(title: str = "CT1", hosts: tuple[str, ...] = ("10.0.0.5",), **kw: Any) -> RemoteAE:
    kw.setdefault("permissions", STORE_FIND)
    return RemoteAE(ae_title=title, hosts=hosts, port=104, **kw)


@pytest.fixture
async def no_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Resolve names from a dict instead of DNS; an unknown name fails as a resolver would."""
    names: dict[str, list[str]] = {}

    async def getaddrinfo(host: str, port: Any, **_: Any) -> list[Any]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in names[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return names


async def test_unregistered_calling_ae_is_refused() -> None:
    admission = await admit(DictRegistry(remote("CT1")), "MR9", "10.0.0.5")

    assert not admission.allowed
    assert "not registered" in admission.reason
    assert admission.permissions == frozenset()


async def test_registered_ae_calling_from_another_address_is_refused() -> None:
    admission = await admit(DictRegistry(remote("CT1")), "CT1", "10.0.0.6")

    assert not admission.allowed
    assert admission.permissions == frozenset()


async def test_registered_ae_with_no_permissions_is_refused() -> None:
    registry = DictRegistry(remote("CT1", permissions=frozenset()))

    admission = await admit(registry, "CT1", "10.0.0.5")

    assert not admission.allowed
    assert "no permissions" in admission.reason


async def test_registered_ae_from_its_address_is_allowed_with_its_permissions() -> None:
    admission = await admit(DictRegistry(remote("CT1")), "CT1", "10.0.0.5")

    assert admission.allowed
    assert admission.permissions == STORE_FIND


async def test_space_padded_calling_ae_title_is_looked_up_stripped() -> None:
    registry = DictRegistry(remote("CT1"))

    admission = await admit(registry, "CT1   ", "10.0.0.5")

    assert admission.allowed
    assert registry.lookups == ["CT1"]


async def test_address_inside_a_registered_cidr_range_is_allowed() -> None:
    registry = DictRegistry(remote("CT1", hosts=("192.168.10.0/24",)))

    assert (await admit(registry, "CT1", "192.168.10.77")).allowed
    assert not (await admit(registry, "CT1", "192.168.11.77")).allowed


async def test_ipv4_mapped_ipv6_address_matches_the_ipv4_host() -> None:
    assert await address_matches("::ffff:10.0.0.5", ("10.0.0.5",))
    assert await address_matches("::ffff:10.1.2.3", ("10.1.0.0/16",))
    assert not await address_matches("::ffff:10.0.0.6", ("10.0.0.5",))


async def test_ipv6_address_matches_an_ipv6_range_only() -> None:
    assert await address_matches("2001:db8::17", ("2001:db8::/64",))
    assert not await address_matches("2001:db9::17", ("2001:db8::/64", "10.0.0.0/8"))


async def test_address_that_is_not_an_ip_never_matches() -> None:
    assert not await address_matches("ct1.example", ("ct1.example", "0.0.0.0/0"))
    assert not await address_matches("", ("0.0.0.0/0",))


async def test_host_name_matches_the_addresses_it_resolves_to(no_dns: dict[str, list[str]]) -> None:
    no_dns["ct1.hospital"] = ["10.0.0.9", "10.0.0.10"]

    assert await address_matches("10.0.0.10", ("ct1.hospital",))
    assert not await address_matches("10.0.0.11", ("ct1.hospital",))


async def test_unresolvable_host_name_is_skipped_not_fatal(no_dns: dict[str, list[str]]) -> None:
    assert await address_matches("10.0.0.5", ("gone.hospital", "10.0.0.5"))
    assert not await address_matches("10.0.0.5", ("gone.hospital",))


def test_admission_survives_its_json_round_trip() -> None:
    admission = Admission(True, "registered", STORE_FIND)

    assert Admission.from_json(admission.to_json()) == admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Auth:
    """Answers every ask from a dict and counts them."""

    def __init__(self) -> None:
        self.answers: dict[str, Admission] = {}
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, calling_ae: str, address: str) -> Admission:
        self.asked.append((calling_ae, address))
        return self.answers.get(calling_ae, Admission(False, "not registered"))


ALLOWED = Admission(True, "registered", frozenset({"store"}))


async def test_cache_answers_from_memory_within_its_ttl() -> None:
    auth, clock = Auth(), Clock()
    auth.answers["CT1"] = ALLOWED
    cache = AdmissionCache(auth, ttl=60, clock=clock)

    first = await cache.admit("CT1", "10.0.0.5")
    clock.now += 59
    second = await cache.admit("CT1", "10.0.0.5")

    assert first == second == ALLOWED
    assert auth.asked == [("CT1", "10.0.0.5")]


async def test_cache_asks_again_after_its_ttl() -> None:
    auth, clock = Auth(), Clock()
    auth.answers["CT1"] = ALLOWED
    cache = AdmissionCache(auth, ttl=60, clock=clock)
    await cache.admit("CT1", "10.0.0.5")
    del auth.answers["CT1"]
    clock.now += 60

    admission = await cache.admit("CT1", "10.0.0.5")

    assert not admission.allowed
    assert len(auth.asked) == 2


async def test_cache_keeps_answers_per_address() -> None:
    auth, clock = Auth(), Clock()
    cache = AdmissionCache(auth, ttl=60, clock=clock)

    await cache.admit("CT1", "10.0.0.5")
    await cache.admit("CT1", "10.0.0.6")

    assert auth.asked == [("CT1", "10.0.0.5"), ("CT1", "10.0.0.6")]


async def test_forget_drops_every_cached_answer_for_that_title_only() -> None:
    auth, clock = Auth(), Clock()
    auth.answers["CT1"] = ALLOWED
    cache = AdmissionCache(auth, ttl=60, clock=clock)
    await cache.admit("CT1", "10.0.0.5")
    await cache.admit("CT1", "10.0.0.6")
    await cache.admit("MR1", "10.0.0.7")
    auth.answers["CT1"] = Admission(False, "removed")

    cache.forget("CT1")

    assert not (await cache.admit("CT1", "10.0.0.5")).allowed
    assert not (await cache.admit("CT1", "10.0.0.6")).allowed
    await cache.admit("MR1", "10.0.0.7")
    assert auth.asked.count(("MR1", "10.0.0.7")) == 1
    assert len(auth.asked) == 5

"""The IP databases: each known type read from a real .mmdb file made on the fly, merged,
reloaded when a file is replaced, and refused with one line when it cannot be used."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rua_sink.dns.ipdata import UNKNOWN, IpDatabases, Network, Shape, read_record, recognise
from rua_sink.errors import ConfigError, IpDatabaseError

from .mmdb import (
    asn_record,
    city_record,
    country_record,
    dbip_country_record,
    ipinfo_country_asn_record,
    ipinfo_lite_record,
    isp_record,
    write_mmdb,
)

V4 = "192.0.2.0/24"
V6 = "2001:db8::/32"

#: database_type -> (record of V4, record of V6, what the reader should find of each)
TYPES: dict[str, tuple[dict[str, Any], dict[str, Any], Network, Network]] = {
    "GeoLite2-Country": (
        country_record("FR"),
        country_record("DE"),
        Network(country="FR"),
        Network(country="DE"),
    ),
    "GeoIP2-Country": (
        country_record("NL"),
        country_record("BE"),
        Network(country="NL"),
        Network(country="BE"),
    ),
    "GeoLite2-City": (city_record("IT"), city_record("ES"), Network("IT"), Network("ES")),
    "GeoIP2-City": (city_record("PT"), city_record("AT"), Network("PT"), Network("AT")),
    "DBIP-Country-Lite": (
        dbip_country_record("SE"),
        dbip_country_record("FI"),
        Network("SE"),
        Network("FI"),
    ),
    "GeoLite2-ASN": (
        asn_record(64500, "Example Net"),
        asn_record(4200000001, "Wide AS"),
        Network(asn=64500, as_org="Example Net"),
        Network(asn=4200000001, as_org="Wide AS"),
    ),
    "GeoIP2-ISP": (
        isp_record(64501, "ISP One"),
        isp_record(64502, "ISP Two"),
        Network(asn=64501, as_org="ISP One"),
        Network(asn=64502, as_org="ISP Two"),
    ),
    "DBIP-ASN-Lite": (
        asn_record(64503, "DB-IP Net"),
        asn_record(64504, "DB-IP Six"),
        Network(asn=64503, as_org="DB-IP Net"),
        Network(asn=64504, as_org="DB-IP Six"),
    ),
    "DBIP-ASN-Lite (compat=GeoLite2-ASN)": (
        asn_record(64505, "Compat Net"),
        asn_record(64506, "Compat Six"),
        Network(asn=64505, as_org="Compat Net"),
        Network(asn=64506, as_org="Compat Six"),
    ),
    "ipinfo bundle_location_lite.mmdb": (
        ipinfo_lite_record("US", 15169, "Google LLC"),
        ipinfo_lite_record("JP", 2497, "Internet Initiative Japan Inc."),
        Network("US", 15169, "Google LLC"),
        Network("JP", 2497, "Internet Initiative Japan Inc."),
    ),
    "ipinfo generic_country_free_country_asn.mmdb": (
        ipinfo_country_asn_record("CA", 812, "Rogers Communications Canada Inc."),
        ipinfo_country_asn_record("BR", 28573, "Claro NXT"),
        Network("CA", 812, "Rogers Communications Canada Inc."),
        Network("BR", 28573, "Claro NXT"),
    ),
}


@pytest.mark.parametrize("database_type", list(TYPES))
def test_each_known_type_over_ipv4_and_ipv6(tmp_path: Path, database_type: str) -> None:
    v4_record, v6_record, v4, v6 = TYPES[database_type]
    path = write_mmdb(tmp_path / "db.mmdb", database_type, {V4: v4_record, V6: v6_record})
    dbs = IpDatabases.open([str(path)])
    try:
        # maxminddb's C extension, on a memory-mapped file
        assert type(dbs.files[0].reader).__module__ == "maxminddb.extension"
        assert dbs.lookup("192.0.2.77") == v4
        assert dbs.lookup("2001:db8:1234::25") == v6
        assert dbs.lookup("198.51.100.1") == UNKNOWN  # a network the file does not hold
        assert dbs.lookup("2001:db9::1") == UNKNOWN
    finally:
        dbs.close()


def test_an_ipv4_only_file_knows_no_ipv6_address(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "v4.mmdb", "GeoLite2-Country", {V4: country_record("FR")}, ip_version=4
    )
    dbs = IpDatabases.open([str(path)])
    assert dbs.lookup("192.0.2.1") == Network("FR")
    assert dbs.lookup("2001:db8::1") == UNKNOWN  # maxminddb refuses it: no answer, no error
    dbs.close()


def test_files_merge_first_answer_wins(tmp_path: Path) -> None:
    country = write_mmdb(
        tmp_path / "country.mmdb",
        "GeoLite2-City",
        {"192.0.2.0/24": city_record("FR"), "2001:db8::/32": city_record("DE")},
    )
    asn = write_mmdb(
        tmp_path / "asn.mmdb",
        "GeoLite2-ASN",
        {"192.0.2.0/25": asn_record(64500, "Example Net"), "198.51.100.0/24": asn_record(1, "X")},
    )
    both = write_mmdb(
        tmp_path / "ipinfo.mmdb",
        "ipinfo bundle_location_lite.mmdb",
        {
            "192.0.2.0/24": ipinfo_lite_record("US", 15169, "Google LLC"),
            "198.51.100.0/24": ipinfo_lite_record("JP", 2497, "IIJ"),
            "203.0.113.0/24": ipinfo_lite_record("CA", 812, "Rogers"),
        },
    )
    dbs = IpDatabases.open([str(country), str(asn), str(both)])
    try:
        # The country from the City file, the network from the ASN file: both listed first.
        assert dbs.lookup("192.0.2.10") == Network("FR", 64500, "Example Net")
        # The ASN file does not know .200: the combined file gives the network, not the
        # country (the City file gave one).
        assert dbs.lookup("192.0.2.200") == Network("FR", 15169, "Google LLC")
        assert dbs.lookup("198.51.100.9") == Network("JP", 1, "X")
        assert dbs.lookup("203.0.113.9") == Network("CA", 812, "Rogers")
        assert dbs.lookup("2001:db8::1") == Network("DE")
        assert dbs.lookup("10.0.0.1") == UNKNOWN
    finally:
        dbs.close()
    # The other order: the combined file first answers everything it knows.
    dbs = IpDatabases.open([str(both), str(country), str(asn)])
    assert dbs.lookup("192.0.2.10") == Network("US", 15169, "Google LLC")
    dbs.close()


def test_registered_country_when_the_location_is_missing() -> None:
    anycast = {"registered_country": {"geoname_id": 2, "iso_code": "US"}}
    assert read_record(Shape.COUNTRY, anycast) == Network("US")
    both = country_record("FR", registered="US")
    assert read_record(Shape.COUNTRY, both) == Network("FR")


@pytest.mark.parametrize(
    ("shape", "record", "found"),
    [
        (Shape.COUNTRY, {"country": {"iso_code": "usa"}}, UNKNOWN),
        (Shape.COUNTRY, {"country": {"iso_code": 7}}, UNKNOWN),
        (Shape.COUNTRY, {"country": "FR"}, UNKNOWN),  # not the nested shape
        (Shape.COUNTRY, ["FR"], UNKNOWN),
        (Shape.COUNTRY, {"country": {"iso_code": "fr"}}, Network("FR")),
        (Shape.NETWORK, {"autonomous_system_number": "64500"}, Network(asn=64500)),
        (Shape.NETWORK, {"autonomous_system_number": 0}, UNKNOWN),
        (Shape.NETWORK, {"autonomous_system_number": 2**32}, UNKNOWN),
        (Shape.NETWORK, {"autonomous_system_number": True}, UNKNOWN),
        (Shape.NETWORK, {"autonomous_system_organization": "No number"}, UNKNOWN),
        (
            Shape.NETWORK,
            {"autonomous_system_number": 1, "autonomous_system_organization": " A\n  B "},
            Network(asn=1, as_org="A B"),
        ),
        (
            Shape.NETWORK,
            {"autonomous_system_number": 1, "autonomous_system_organization": "x" * 5000},
            Network(asn=1, as_org="x" * 200),
        ),
        (Shape.BOTH, {"asn": "AS", "as_name": "Nothing", "country_code": ""}, UNKNOWN),
        (Shape.BOTH, {"asn": "as64500", "country": "Germany"}, Network(asn=64500)),
        (Shape.BOTH, {"asn": 64500, "as_name": "", "country_code": "DE"}, Network("DE", 64500)),
    ],
)
def test_odd_records_give_what_they_can(shape: Shape, record: Any, found: Network) -> None:
    assert read_record(shape, record) == found


def test_recognised_types() -> None:
    assert recognise("GeoLite2-ASN") == ("GeoLite2-ASN", Shape.NETWORK)
    assert recognise("ipinfo standard_location.mmdb") == ("ipinfo", Shape.BOTH)
    assert recognise("GeoIP2-Anonymous-IP") is None
    assert recognise("ipinfo") is None
    assert recognise("geolite2-country") is None  # types are matched exactly


# -- reloads -------------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.loaded: list[float] = []
        self.failures = 0

    def on_loaded(self, oldest: float) -> None:
        self.loaded.append(oldest)

    def on_failure(self) -> None:
        self.failures += 1


def opened(paths: list[Path], calls: Calls) -> IpDatabases:
    return IpDatabases.open(
        [str(p) for p in paths], on_loaded=calls.on_loaded, on_failure=calls.on_failure
    )


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "asn.mmdb"
    country = write_mmdb(tmp_path / "c.mmdb", "GeoLite2-Country", {V4: country_record("FR")})
    write_mmdb(path, "GeoLite2-ASN", {V4: asn_record(64500, "Old Net")}, build_epoch=1_700_000_000)
    calls = Calls()
    dbs = opened([country, path], calls)
    assert calls.loaded == [1_700_000_000]  # the oldest file's build
    first_version = dbs.version
    assert dbs.lookup("192.0.2.1") == Network("FR", 64500, "Old Net")
    assert dbs.refresh() == 0  # nothing changed

    write_mmdb(
        path,
        "GeoLite2-ASN",
        {V4: asn_record(64511, "New Net"), V6: asn_record(64512, "New Six")},
        build_epoch=1_800_000_000,
    )
    assert dbs.lookup("192.0.2.1").asn == 64500  # not before the next refresh
    assert dbs.refresh() == 1
    assert dbs.lookup("192.0.2.1") == Network("FR", 64511, "New Net")
    assert dbs.lookup("2001:db8::9") == Network(None, 64512, "New Six")
    assert dbs.version > first_version
    # The country file is now the oldest.
    assert calls.loaded[-1] == dbs.files[0].build_epoch
    assert calls.failures == 0
    dbs.close()


def test_a_file_replaced_by_another_known_type(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_mmdb(path, "GeoLite2-Country", {V4: country_record("FR")})
    dbs = IpDatabases.open([str(path)])
    write_mmdb(path, "DBIP-ASN-Lite (compat=GeoLite2-ASN)", {V4: asn_record(3215, "Orange")})
    assert dbs.refresh() == 1
    assert dbs.lookup("192.0.2.1") == Network(None, 3215, "Orange")
    dbs.close()


def replace_with(path: Path, data: bytes) -> None:
    """A new file renamed over ``path``: a file rewritten in place under a live map could
    be read half old, half new (ipdata's text says to replace them so)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: replace_with(p, b"not a database at all" * 100),
        lambda p: write_mmdb(p, "GeoIP2-Anonymous-IP", {V4: {"is_anonymous": True}}),
        lambda p: p.unlink(),
    ],
    ids=["garbage", "unknown type", "removed"],
)
def test_a_bad_replacement_keeps_the_old_file(tmp_path: Path, spoil: Callable[[Path], Any]) -> None:
    path = write_mmdb(tmp_path / "geo.mmdb", "GeoLite2-Country", {V4: country_record("FR")})
    calls = Calls()
    dbs = opened([path], calls)
    replace_with(path, path.read_bytes())  # a new inode: a change
    assert dbs.refresh() == 1  # the same content, read again
    spoil(path)
    assert dbs.refresh() == 0
    assert dbs.lookup("192.0.2.1") == Network("FR")  # still served
    assert calls.failures == 1
    assert dbs.refresh() == 0
    assert calls.failures == 1  # counted once per change of the file
    write_mmdb(path, "GeoLite2-Country", {V4: country_record("DE")})
    assert dbs.refresh() == 1
    assert dbs.lookup("192.0.2.1") == Network("DE")
    assert calls.failures == 1
    dbs.close()


# -- refused at start ----------------------------------------------------------------------


def test_bad_files_are_refused_at_start_naming_file_and_setting(tmp_path: Path) -> None:
    good = write_mmdb(tmp_path / "good.mmdb", "GeoLite2-Country", {V4: country_record("FR")})
    unknown = write_mmdb(tmp_path / "anon.mmdb", "GeoIP2-Anonymous-IP", {V4: {"is_tor": True}})
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"\x00" * 4096)
    missing = tmp_path / "missing.mmdb"
    for path, says in (
        (unknown, "unknown database type 'GeoIP2-Anonymous-IP'"),
        (garbage, "does not open"),
        (missing, "does not open"),
    ):
        with pytest.raises(IpDatabaseError) as caught:
            IpDatabases.open([str(good), str(path)])
        text = str(caught.value)
        assert text.startswith(f"RUA_SINK_IP_DATABASES: {path}: "), text
        assert says in text, text
        assert "\n" not in text
        assert isinstance(caught.value, ConfigError)


def test_no_files_no_answers() -> None:
    dbs = IpDatabases.open([])
    assert len(dbs) == 0 and dbs.lookup("192.0.2.1") == UNKNOWN
    assert dbs.oldest_build == 0.0 and dbs.refresh() == 0


def test_the_setting_is_a_list_of_files() -> None:
    from rua_sink.config import Settings

    assert Settings.from_env({}).ip_databases == ()
    env = {"RUA_SINK_IP_DATABASES": " /geo/City.mmdb , /geo/ASN.mmdb ,"}
    assert Settings.from_env(env).ip_databases == ("/geo/City.mmdb", "/geo/ASN.mmdb")

"""Small MaxMind-format (.mmdb) files made by the tests, in the record shapes of the
databases rua-sink reads (see rua_sink/dns/ipdata.py for where each shape is from)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


class _Writer(MMDBWriter):
    """mmdb-writer stamps the build with the current time; the tests choose it."""

    def __init__(self, build_epoch: int | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self.build_epoch is not None:
            meta["build_epoch"] = self.build_epoch
        return meta


def write_mmdb(
    path: Path,
    database_type: str,
    networks: Mapping[str, Any],
    *,
    ip_version: int = 6,
    build_epoch: int | None = None,
) -> Path:
    """A database of ``database_type`` whose ``networks`` (CIDR -> record) are written to a
    new file, renamed over ``path`` (as geoipupdate replaces one)."""
    writer = _Writer(
        build_epoch,
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description="rua-sink test database",
        int_type="u32",
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    tmp = path.with_name(f".{path.name}.tmp")
    writer.to_db_file(str(tmp))
    os.replace(tmp, path)
    return path


def country_record(code: str, *, registered: str | None = None) -> dict[str, Any]:
    """A GeoLite2/GeoIP2 Country or City record (City adds city, location...: ignored)."""
    record: dict[str, Any] = {
        "continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
        "country": {"geoname_id": 1, "iso_code": code, "names": {"en": f"Country {code}"}},
    }
    if registered is not None:
        record["registered_country"] = {"geoname_id": 2, "iso_code": registered}
    return record


def city_record(code: str) -> dict[str, Any]:
    return {
        **country_record(code),
        "city": {"geoname_id": 3, "names": {"en": "Somewhere"}},
        "location": {"latitude": 48.85, "longitude": 2.35, "accuracy_radius": 100},
    }


def dbip_country_record(code: str) -> dict[str, Any]:
    """DB-IP's Lite country record: MaxMind's names, and is_in_european_union."""
    return {
        "continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
        "country": {
            "geoname_id": 1,
            "iso_code": code,
            "is_in_european_union": True,
            "names": {"en": f"Country {code}"},
        },
    }


def asn_record(number: int, org: str) -> dict[str, Any]:
    """GeoLite2-ASN's, and DB-IP's ASN Lite's, record."""
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


def isp_record(number: int, org: str) -> dict[str, Any]:
    """GeoIP2-ISP's record: the ASN's fields and the ISP's."""
    return {**asn_record(number, org), "isp": f"{org} ISP", "organization": f"{org} Org"}


def ipinfo_lite_record(code: str, asn: int, name: str) -> dict[str, Any]:
    """IPinfo Lite's flat record: country is the name, country_code the code, asn text."""
    return {
        "country": f"Country {code}",
        "country_code": code,
        "continent": "Europe",
        "continent_code": "EU",
        "asn": f"AS{asn}",
        "as_name": name,
        "as_domain": "example.net",
    }


def ipinfo_country_asn_record(code: str, asn: int, name: str) -> dict[str, Any]:
    """IPinfo's older country+ASN record: country is the code."""
    return {
        "country": code,
        "country_name": f"Country {code}",
        "continent": "EU",
        "continent_name": "Europe",
        "asn": f"AS{asn}",
        "as_name": name,
        "as_domain": "example.net",
    }

#!/usr/bin/env python3
"""Generates the small GeoIP test databases in this directory (pip install mmdb-writer netaddr).

Both map the same made-up ranges to countries; one uses the GeoIP2/GeoLite2 record layout
({"country": {"iso_code": ...}}), the other the flat DB-IP layout ({"country_code": ...}).
The data is invented for tests and placed in the public domain (CC0).
"""
from netaddr import IPSet
from mmdb_writer import MMDBWriter

RANGES = {
    "5.0.0.0/8": "DE",
    "8.8.8.0/24": "US",
    "49.0.0.0/8": "IN",
    "110.0.0.0/8": "CN",
    "126.0.0.0/8": "JP",
    "175.0.0.0/8": "KP",
    "2001:db8::/32": "FR",
}

for name, database_type, record in [
    ("geoip2-layout.mmdb", "GeoLite2-Country", lambda cc: {"country": {"iso_code": cc}}),
    ("flat-layout.mmdb", "country ipvAll", lambda cc: {"country_code": cc}),
]:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type, languages=["en"], description="policy-gateway test fixture")
    for cidr, cc in RANGES.items():
        writer.insert_network(IPSet([cidr]), record(cc))
    writer.to_db_file(name)
    print("wrote", name)

#!/usr/bin/env python3
"""Rebuild i94-traffic-2018-hourly.csv from the UCI "Metro Interstate Traffic Volume" CSV
(stdlib only).

    python3 make_i94_hourly.py Metro_Interstate_Traffic_Volume.csv > i94-traffic-2018-hourly.csv

The source file is the dataset's `Metro_Interstate_Traffic_Volume.csv` (gunzipped), 48,204
rows, sha256 in README.md. See README.md in this directory for provenance, licence and every
change made.
"""
import csv
import datetime as dt
import sys
from zoneinfo import ZoneInfo

LOCAL = ZoneInfo("America/Chicago")  # MN DoT ATR station 301, between Minneapolis and St Paul
UTC = dt.timezone.utc
# Output window: 16 whole weeks of UTC days, Sunday 2018-04-01 to Saturday 2018-07-21: the
# 16-week stretch of the data with the fewest missing hours, and no DST change in it.
START = dt.datetime(2018, 4, 1, 0, tzinfo=UTC)
HOURS = 16 * 7 * 24


def main(path):
    by_utc = {}
    for r in csv.DictReader(open(path, newline="")):
        naive = dt.datetime.strptime(r["date_time"], "%Y-%m-%d %H:%M:%S")
        t = naive.replace(tzinfo=LOCAL).astimezone(UTC)
        n = int(r["traffic_volume"])
        # The source repeats an hour once per weather condition, with the same volume.
        if by_utc.setdefault(t, n) != n:
            sys.exit(f"{path}: two volumes for {naive} local")
    hours = [START + dt.timedelta(hours=i) for i in range(HOURS)]
    values = [by_utc.get(t) for t in hours]
    for i, v in enumerate(values):
        if v is None:
            # A missing hour is a gap in the station's record, not an empty road: the mean
            # of the nearest recorded hours on either side, rounded.
            before = next(values[j] for j in range(i - 1, -1, -1) if values[j] is not None)
            after = next(values[j] for j in range(i + 1, HOURS) if values[j] is not None)
            print(f"filled {hours[i]:%Y-%m-%dT%H:%M:%SZ}: ({before} + {after}) / 2", file=sys.stderr)
            values[i] = round((before + after) / 2)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["hour", "value"])
    for t, v in zip(hours, values):
        out.writerow([t.strftime("%Y-%m-%dT%H:%M:%SZ"), v])


if __name__ == "__main__":
    main(sys.argv[1])

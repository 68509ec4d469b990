#!/usr/bin/env python3
"""Rebuild bikeshare-dc-2011-hourly.csv from the ISLP wheel (stdlib only).

    pip download --no-deps islp==0.6.0 -d /tmp/islp
    unzip -o /tmp/islp/islp-0.6.0-py3-none-any.whl 'ISLP/data/Bikeshare.csv' -d /tmp/islp
    python3 make_bikeshare_hourly.py /tmp/islp/ISLP/data/Bikeshare.csv > bikeshare-dc-2011-hourly.csv

See README.md in this directory for provenance, licence and every change made.
"""
import csv
import datetime as dt
import sys
from zoneinfo import ZoneInfo

LOCAL = ZoneInfo("America/New_York")  # Capital Bikeshare, Washington DC
UTC = dt.timezone.utc
# Output window: the last 16 whole weeks of UTC days in the data.
START = dt.datetime(2011, 9, 11, 0, tzinfo=UTC)
HOURS = 16 * 7 * 24

def main(path):
    by_utc = {}
    for r in csv.DictReader(open(path, newline="")):
        # ISLP's `day` is day-of-year of 2011 (1..365); `hr` is the local clock hour.
        day = dt.date(2011, 1, 1) + dt.timedelta(days=int(r["day"]) - 1)
        hr = int(r["hr"])
        n = int(r["bikers"])  # = casual + registered = UCI `cnt`
        naive = dt.datetime(day.year, day.month, day.day, hr)
        first = naive.replace(tzinfo=LOCAL, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=LOCAL, fold=1).astimezone(UTC)
        if first != second:
            # Ambiguous clock hour at the DST fall-back (2011-11-06 01:00): the
            # source merged two real hours into one row; split it between them.
            by_utc[first] = by_utc.get(first, 0) + (n + 1) // 2
            by_utc[second] = by_utc.get(second, 0) + n // 2
        else:
            by_utc[first] = by_utc.get(first, 0) + n
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["hour", "value"])
    for i in range(HOURS):
        t = START + dt.timedelta(hours=i)
        # Hours absent from the source are hours with no rentals recorded -> 0.
        out.writerow([t.strftime("%Y-%m-%dT%H:%M:%SZ"), by_utc.get(t, 0)])

if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""An independent decoder of HdrHistogram interval logs (.hlog), written
from the format's description with the standard library only (base64, zlib,
struct), to check the client's `--hlog` output against its JSON report.

    python3 tests/client_hlog_decode.py RUN.hlog RUN.json

Each interval line is `Tag=T,start,length,max,HISTOGRAM`: the histogram is
base64 of the V2 compressed encoding: a big-endian header (cookie
0x1c849314, length), then a zlib stream holding the V2 encoding (cookie
0x1c849313, payload length, normalizing index offset, significant digits,
lowest and highest trackable values, integer-to-double ratio) and its
counts: LEB128 variable-length (at most 9 bytes, the 9th holding 8 bits),
ZigZag-encoded 64-bit integers, where a negative value -n stands for n empty
buckets. Prints one line per tag and exits 0 when every tag's total count
equals the JSON report's (latency, latency_uncorrected, lag), every line's
Interval_Max equals the maximum of its decoded histogram, and the intervals
are one second each in order; exits 1 otherwise.
"""

import base64
import json
import struct
import sys
import zlib

V2_COOKIE = 0x1C849313
V2_COMPRESSED_COOKIE = 0x1C849314


def varint(buf, i):
    """One LEB128-64b9B value at buf[i:]: (value, next index)."""
    value = 0
    for k in range(8):
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << (7 * k)
        if b & 0x80 == 0:
            return value, i
    value |= buf[i] << 56
    return value, i + 1


def zigzag(v):
    return (v >> 1) ^ -(v & 1)


def decode(b64):
    """A histogram as (lowest, highest, digits, {bucket index: count})."""
    raw = base64.b64decode(b64)
    cookie, length = struct.unpack(">ii", raw[:8])
    if cookie & 0xFFFFFFFF != V2_COMPRESSED_COOKIE:
        raise ValueError("not a V2 compressed histogram: cookie %#x" % cookie)
    inner = zlib.decompress(raw[8 : 8 + length])
    cookie, payload, _offset, digits, lowest, highest, _ratio = struct.unpack(">iiiiqqd", inner[:40])
    if cookie & 0xFFFFFFFF != V2_COOKIE:
        raise ValueError("not a V2 histogram: cookie %#x" % cookie)
    counts, i, index, end = {}, 40, 0, 40 + payload
    while i < end:
        v, i = varint(inner, i)
        v = zigzag(v)
        if v < 0:
            index += -v
        else:
            if v:
                counts[index] = v
            index += 1
    return lowest, highest, digits, counts


def highest_equivalent(lowest, digits, index):
    """The largest value that lands in bucket `index` (HdrHistogram's layout)."""
    largest_single = 2 * 10**digits
    sub_bucket_count = 1 << (largest_single - 1).bit_length()
    sub_half = sub_bucket_count // 2
    unit = (lowest).bit_length() - 1  # floor(log2(lowest))
    bucket = (index >> (sub_half.bit_length() - 1)) - 1
    sub = (index & (sub_half - 1)) + sub_half
    if bucket < 0:
        sub -= sub_half
        bucket = 0
    value = sub << (bucket + unit)
    size = 1 << (unit + bucket + (1 if sub >= sub_bucket_count else 0))
    return value + size - 1


def main(hlog_path, json_path):
    report = json.load(open(json_path))
    totals, previous, errors, base = {}, {}, [], None
    with open(hlog_path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith("#[BaseTime: "):
                base = float(line.split()[1])
            if not line or line.startswith("#") or line.startswith('"StartTimestamp"'):
                continue
            tag = None
            if line.startswith("Tag="):
                tag, line = line[4:].split(",", 1)
            start, length, interval_max, histogram = line.split(",")
            lowest, _highest, digits, counts = decode(histogram)
            totals[tag] = totals.get(tag, 0) + sum(counts.values())
            top = max(counts) if counts else None
            decoded_max = highest_equivalent(lowest, digits, top) / 1e6 if counts else 0.0
            if abs(decoded_max - float(interval_max)) > 0.0015:
                errors.append("line %d: Interval_Max %s, decoded %.3f" % (n, interval_max, decoded_max))
            if abs(float(length) - 1.0) > 1e-9:
                errors.append("line %d: interval of %s s" % (n, length))
            if tag in previous and float(start) <= previous[tag]:
                errors.append("line %d: %s starts at %s, not after %s" % (n, tag, start, previous[tag]))
            previous[tag] = float(start)
    if base is None:
        errors.append("no #[BaseTime: ...] line")
    elif abs(base - report["windows"][0]["start_unix"]) > 0.001:
        errors.append("BaseTime %s is not the window's start %s" % (base, report["windows"][0]["start_unix"]))
    expected = {"corrected": report["latency"]["count"], "uncorrected": report["latency_uncorrected"]["count"]}
    if report.get("lag") is not None:
        expected["lag"] = report["lag"]["count"]
    for tag in sorted(set(expected) | set(totals)):
        got, want = totals.get(tag, 0), expected.get(tag)
        print("%-12s %d values in the log, %s in the JSON report" % (tag, got, want))
        if got != want:
            errors.append("tag %s: %d values in the log, %s in the report" % (tag, got, want))
    for e in errors:
        print("MISMATCH: " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: client_hlog_decode.py RUN.hlog RUN.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))

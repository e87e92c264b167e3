#!/usr/bin/env python3
"""Hostile clients for the soak (scripts/soak.sh): standard library only.

    hostile.py --addr 127.0.0.1:PORT --duration SECS --idle-timeout SECS \
               [--profile full|serial] [--json FILE]

Runs, until --duration has passed (every wait is bounded by that deadline),
these kinds of misbehaving client against an uppercase-echo server:

  slowloris_alive  one lowercase byte every ALIVE_INTERVAL (less than the idle
                   timeout apart), each echo checked; the connection must stay
                   open for its whole life (expected: "ok").
  slowloris_cut    one byte, its echo, then silence longer than the idle
                   timeout before the next byte: the server must cut it
                   (expected: "cut"; "not_cut" if the next byte was due first).
  idle             connects and sends nothing: must be cut (expected: "cut").
  reset            connects and resets (SO_LINGER 0): right away, after a
                   short message, or after 64 KiB without reading (expected:
                   "done").
  hit_and_run      sends 1 MiB and closes without reading a byte of the echo
                   (the kernel then resets the connection; expected: "done").

Profiles: "full" runs every kind at once, in loops (2 slowloris_alive,
2 slowloris_cut, 2 idle, 1 reset loop at ~10/s, 1 hit_and_run every 2 s), for
servers that serve connections concurrently. "serial" runs the kinds one
connection at a time, in turn, with a pause between rounds, so that a server
that serves one client at a time is never held by hostile clients for more
than about the idle timeout at once (normal clients queue behind for at most
that long, which is by design for such a server).

Outcomes are counted per kind. Anything not expected (a slowloris_alive cut
or given a wrong echo, an idle connection never cut, a refused connection,
a 1 MiB send that stalls) is "unexpected"; an operation still running when
the deadline comes is "aborted" (neither). Prints a one-line summary on
stdout, writes the counts (and cut times) as JSON to --json, and exits 1 if
anything unexpected happened, 2 on bad arguments.
"""

import argparse
import itertools
import json
import socket
import struct
import sys
import threading
import time

ALIVE_INTERVAL = 0.5  # seconds between slowloris_alive bytes
HIT_AND_RUN_BYTES = 1 << 20
RESET_BIG_BYTES = 64 << 10
CONNECT_TIMEOUT = 5.0

EXPECTED = {
    "slowloris_alive": {"ok"},
    "slowloris_cut": {"cut"},
    "idle": {"cut"},
    "reset": {"done"},
    "hit_and_run": {"done"},
}
NEUTRAL = {"aborted"}


class Deadline(Exception):
    """The run's deadline came while an operation was waiting."""


class Tally:
    """Outcome counts per kind and cut times, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {kind: {} for kind in EXPECTED}
        self.cut_secs = {"slowloris_cut": [], "idle": []}

    def add(self, kind, outcome, cut_after=None):
        with self.lock:
            self.counts[kind][outcome] = self.counts[kind].get(outcome, 0) + 1
            if cut_after is not None:
                self.cut_secs[kind].append(cut_after)

    def _unexpected(self):
        return sum(
            n
            for kind, outcomes in self.counts.items()
            for outcome, n in outcomes.items()
            if outcome not in EXPECTED[kind] and outcome not in NEUTRAL
        )

    def to_json(self, args, elapsed):
        with self.lock:
            cuts = {}
            for kind, xs in self.cut_secs.items():
                if xs:
                    cuts[kind] = {
                        "n": len(xs),
                        "min": round(min(xs), 3),
                        "mean": round(sum(xs) / len(xs), 3),
                        "max": round(max(xs), 3),
                    }
            return {
                "tool": "switchyard-hostile",
                "addr": args.addr,
                "profile": args.profile,
                "idle_timeout": args.idle_timeout,
                "duration": args.duration,
                "elapsed": round(elapsed, 3),
                "outcomes": {k: dict(v) for k, v in self.counts.items()},
                "connections": sum(sum(v.values()) for v in self.counts.values()),
                "cut_after_secs": cuts,
                "unexpected": self._unexpected(),
            }

    def summary(self):
        with self.lock:
            parts = []
            for kind, outcomes in self.counts.items():
                if outcomes:
                    inner = " ".join(f"{o}={n}" for o, n in sorted(outcomes.items()))
                    parts.append(f"{kind}[{inner}]")
            return " ".join(parts)


class Hostile:
    """The kinds of hostile client, each one connection, bounded by the deadline."""

    def __init__(self, addr, idle_timeout, deadline, tally, serial):
        self.addr = addr
        self.idle_timeout = idle_timeout
        self.deadline = deadline
        self.tally = tally
        # How long an echo, or the cut of an idle connection (counted from
        # connect), may take: a connection may first wait in the backlog
        # (behind others on a serial server; behind a slow fork(2) in fork
        # mode), so this is generous; the cut times are reported as measured.
        # Serial: slowloris connections live shorter, so the server is held
        # for about the idle timeout at most.
        self.wait_bound = 4 * idle_timeout + 12
        self.alive_life = max(3 * ALIVE_INTERVAL, idle_timeout) if serial else 15.0
        self.reset_variant = itertools.count()  # reset kinds in turn (next() is atomic in CPython)

    def left(self):
        return self.deadline - time.monotonic()

    def connect(self):
        if self.left() <= 0:
            raise Deadline()
        s = socket.create_connection(self.addr, timeout=min(CONNECT_TIMEOUT, max(self.left(), 0.1)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def recv_until(self, s, until, n=1):
        """Receives up to n bytes, waiting until `until` (monotonic) at most.
        Returns b"" on end-of-file, None on timeout; raises Deadline when the
        run's deadline came first."""
        limit = min(until, self.deadline)
        while True:
            wait = limit - time.monotonic()
            if wait <= 0:
                if until > self.deadline:
                    raise Deadline()
                return None
            s.settimeout(wait)
            try:
                return s.recv(n)
            except socket.timeout:
                continue

    def run_one(self, kind):
        """One connection of `kind`; records its outcome."""
        fn = getattr(self, kind)
        try:
            outcome, cut_after = fn()
        except Deadline:
            outcome, cut_after = "aborted", None
        except ConnectionRefusedError:
            outcome, cut_after = "refused", None
        except (socket.timeout, TimeoutError):
            outcome, cut_after = ("aborted", None) if self.left() <= 0 else ("timeout", None)
        except ConnectionResetError:
            outcome, cut_after = "reset_by_server", None
        except OSError as e:
            outcome, cut_after = f"error_{e.errno}", None
        except Exception as e:  # a bug here must show up as unexpected, not kill the thread
            print(f"hostile: {kind}: {e!r}", file=sys.stderr)
            outcome, cut_after = "exception", None
        self.tally.add(kind, outcome, cut_after)
        return outcome

    def slowloris_alive(self):
        with self.connect() as s:
            end = time.monotonic() + self.alive_life
            i = 0
            while time.monotonic() < end:
                b = bytes([ord("a") + i % 26])
                i += 1
                s.sendall(b)
                got = self.recv_until(s, time.monotonic() + self.wait_bound)
                if got is None:
                    return "timeout", None
                if got == b"":
                    return "cut", None
                if got != b.upper():
                    return "bad_echo", None
                nap = min(ALIVE_INTERVAL, end - time.monotonic())
                if nap > 0:
                    if self.left() < nap:
                        raise Deadline()
                    time.sleep(nap)
            return "ok", None

    def slowloris_cut(self):
        with self.connect() as s:
            s.sendall(b"z")
            got = self.recv_until(s, time.monotonic() + self.wait_bound)
            if got is None:
                return "timeout", None
            if got != b"Z":
                return ("cut_early", None) if got == b"" else ("bad_echo", None)
            last = time.monotonic()
            # The next byte is due 1.5 s after the idle timeout: the server
            # must have cut the connection by then.
            got = self.recv_until(s, last + self.idle_timeout + 1.5)
            if got == b"":
                return "cut", time.monotonic() - last
            if got is None:
                s.sendall(b"z")
                return "not_cut", None
            return "bad_echo", None

    def idle(self):
        with self.connect() as s:
            start = time.monotonic()
            got = self.recv_until(s, start + self.wait_bound)
            if got == b"":
                return "cut", time.monotonic() - start
            if got is None:
                return "not_cut", None
            return "bad_echo", None

    def reset(self):
        v = next(self.reset_variant) % 3
        s = self.connect()
        try:
            if v == 1:
                s.sendall(b"hello, reset\n")
            elif v == 2:
                s.settimeout(10)
                s.sendall(b"r" * RESET_BIG_BYTES)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            s.close()
        return "done", None

    def hit_and_run(self):
        s = self.connect()
        try:
            s.settimeout(min(15.0, max(self.left(), 0.1)))
            try:
                s.sendall(b"x" * HIT_AND_RUN_BYTES)
            except (socket.timeout, TimeoutError):
                # A server that stops reading while its echo is not read is
                # backpressure, which is fine; one that never reads again is not.
                return ("aborted", None) if self.left() <= 0 else ("send_stalled", None)
        finally:
            s.close()
        return "done", None


def sleep_until_or_deadline(h, secs):
    time.sleep(max(0.0, min(secs, h.left())))


def loop(h, kind, pause):
    """Repeats one kind until the deadline, `pause` seconds apart."""
    while h.left() > 0:
        h.run_one(kind)
        sleep_until_or_deadline(h, pause)


def serial_rounds(h):
    """One hostile connection at a time: every kind in turn, then a pause."""
    kinds = ["reset", "reset", "reset", "hit_and_run", "slowloris_alive", "slowloris_cut", "idle"]
    while h.left() > 0:
        for kind in kinds:
            if h.left() <= 0:
                break
            h.run_one(kind)
        sleep_until_or_deadline(h, 1.0)


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main():
    p = argparse.ArgumentParser(description="Hostile clients for the soak (bounded by --duration).")
    p.add_argument("--addr", required=True, type=parse_addr, help="server HOST:PORT")
    p.add_argument("--duration", required=True, type=float, help="seconds to run")
    p.add_argument("--idle-timeout", type=float, default=2.0, help="the server's --idle-timeout (s)")
    p.add_argument("--profile", choices=["full", "serial"], default="full")
    p.add_argument("--json", help="write the outcome counts as JSON to this file")
    args = p.parse_args()
    if args.duration <= 0 or args.idle_timeout <= 0:
        p.error("--duration and --idle-timeout must be positive")

    started = time.monotonic()
    tally = Tally()
    h = Hostile(args.addr, args.idle_timeout, started + args.duration, tally, args.profile == "serial")
    if args.profile == "serial":
        plan = [(serial_rounds, (h,))]
    else:
        plan = (
            [(loop, (h, "slowloris_alive", 0.2))] * 2
            + [(loop, (h, "slowloris_cut", 0.5))] * 2
            + [(loop, (h, "idle", 0.5))] * 2
            + [(loop, (h, "reset", 0.1))]
            + [(loop, (h, "hit_and_run", 2.0))]
        )
    threads = [threading.Thread(target=fn, args=a, daemon=True) for fn, a in plan]
    for t in threads:
        t.start()
    for t in threads:
        # Every wait inside is bounded by the deadline; the margin covers a
        # connect or send timeout that started just before it.
        t.join(timeout=max(0.0, started + args.duration + 20 - time.monotonic()))
    elapsed = time.monotonic() - started
    report = tally.to_json(args, elapsed)
    report["threads_left"] = sum(t.is_alive() for t in threads)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    print(f"hostile {args.profile}: {report['connections']} connections, "
          f"{report['unexpected']} unexpected: {tally.summary()}")
    return 1 if report["unexpected"] or report["threads_left"] else 0


if __name__ == "__main__":
    sys.exit(main())

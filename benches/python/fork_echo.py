#!/usr/bin/env python3
"""The tutorial's process-per-connection server, the baseline of the fork
target (issue 16): accept, fork, and the child sends back every byte it
receives uppercased (bytes.upper()) until end-of-file, then exits; the
parent closes its copy of the connection and reaps its children from a
SIGCHLD handler (os.waitpid with WNOHANG, so no zombie is left and their CPU
time is counted in the parent's). `python3 fork_echo.py 127.0.0.1:0`;
prints "listening on ADDR:PORT mode=python-fork pid=PID" once bound, as the
benchmark harness expects.
"""
import os
import signal
import socket
import sys


def reap(_signum, _frame):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data.upper())


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(1024)
    signal.signal(signal.SIGCHLD, reap)
    print(f"listening on {host}:{listener.getsockname()[1]} mode=python-fork pid={os.getpid()}", flush=True)
    while True:
        conn, _ = listener.accept()  # retried after SIGCHLD (PEP 475)
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            listener.close()
            try:
                serve(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()

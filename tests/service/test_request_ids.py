"""Request ids made by the service (service.core.logging.new_request_id)."""

from __future__ import annotations

import os
import re

from service.core.logging import new_request_id


def test_request_ids_are_unique_hex_and_differ_in_a_forked_process() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked from this process must not repeat its ids
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:16] != ids[0][:16] and child not in ids

"""Liveness of :class:`ftmpi.comm.Channel` without mpirun: a fake communicator stands in for mpi4py's.

The fake hands out matched messages whose receive completes only when the test says so (a sender stopped
mid-send), or fails the way ULFM reports a dead sender. What is checked: no wait outlives the caller's
deadline, nothing raises out of ``poll`` for a message still arriving, the partial message is kept (request
and buffer alive) and delivered by a later poll, in order.
"""
from __future__ import annotations

import pickle
import threading
import time
from collections import defaultdict, deque
from typing import Any

import pytest
from mpi4py import MPI

from ftmpi.comm import Channel, Detector


class FakeRequest:
    """Completes when ``release()`` was called (then fills the buffer), or raises ``error`` when set."""

    def __init__(self, buf: bytearray, payload: bytes, done: bool) -> None:
        self.buf, self.payload, self.done = buf, payload, done
        self.error: int | None = None
        self.tests = 0

    def release(self) -> None:
        self.done = True

    def Test(self) -> bool:
        self.tests += 1
        if self.error is not None:
            raise MPI.Exception(self.error)
        if self.done:
            self.buf[:] = self.payload
        return self.done


class FakeMessage:
    def __init__(self, comm: FakeComm, payload: bytes, done: bool) -> None:
        self.comm, self.payload, self.done = comm, payload, done

    def Irecv(self, spec: list[Any]) -> FakeRequest:
        buf = spec[0]
        assert len(buf) == len(self.payload)
        req = FakeRequest(buf, self.payload, self.done)
        self.comm.requests.append(req)
        return req


class FakeComm:
    """Just enough of an mpi4py communicator for Channel: Dup, errhandler, rank/size, Improbe."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.queues: dict[tuple[int, int], deque[tuple[bytes, bool]]] = defaultdict(deque)
        self.requests: list[FakeRequest] = []

    def Dup(self) -> FakeComm:
        return self

    def Set_errhandler(self, _h: Any) -> None:
        pass

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return self.size

    def post(self, source: int, tag: int, obj: Any, arrives: bool = True) -> None:
        """Queue a message; ``arrives=False``: matched, but its bytes never finish arriving until released."""
        self.queues[(source, tag)].append((pickle.dumps(obj, protocol=5), arrives))

    def Improbe(self, source: int, tag: int, status: MPI.Status) -> FakeMessage | None:
        q = self.queues[(source, tag)]
        if not q:
            return None
        payload, done = q.popleft()
        status.Set_elements(MPI.BYTE, len(payload))
        return FakeMessage(self, payload, done)


def poll_in_thread(ch: Channel, sources: list[int], tag: int, deadline_s: float, bound: float = 20.0) -> Any:
    """Run ``ch.poll`` in a thread; the test fails (instead of hanging) if it outlives ``bound`` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = ch.poll(sources, tag, time.monotonic() + deadline_s,
                                 until=lambda o: all(s in o.messages for s in sources))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), f"poll with a {deadline_s}s deadline was still waiting after {bound}s"
    if "exc" in box:
        raise AssertionError(f"poll raised {type(box['exc']).__name__}: {box['exc']}")
    return box["out"]


TAG = 12


def test_message_stalled_mid_transfer_is_kept_and_completed_later():
    comm = FakeComm()
    ch = Channel(comm, Detector.TIMEOUT)
    comm.post(1, TAG, {"t": "reply", "big": list(range(1000))}, arrives=False)  # sender stopped mid-send
    comm.post(2, TAG, {"t": "reply", "rank": 2})
    out = poll_in_thread(ch, [1, 2], TAG, deadline_s=0.3)
    assert out.messages == {2: [{"t": "reply", "rank": 2}]}
    assert 1 in out.timed_out, "the stalled sender is reported as timed out, not raised"
    assert out.partial == {1: len(comm.requests[0].payload)}
    req = comm.requests[0]
    assert ch.partial(1, TAG) == len(req.payload), "the request and its buffer are kept"
    n_tests = req.tests
    comm.post(1, TAG, {"t": "reply", "next": True})  # a newer message from the same sender
    assert ch.try_recv(1, TAG) is None, "nothing newer is received while an older message is in flight"
    assert req.tests > n_tests and len(comm.queues[(1, TAG)]) == 1
    req.release()  # the sender wakes up and the bytes arrive
    before = ch.traffic.bytes_recv
    out = poll_in_thread(ch, [1], TAG, deadline_s=5.0)
    assert out.messages[1][0]["big"][-1] == 999 and not out.timed_out
    assert ch.traffic.bytes_recv - before == len(req.payload) and ch.partial(1, TAG) is None
    assert ch.try_recv(1, TAG) == {"t": "reply", "next": True}, "then the newer one, in order"


def test_sender_failing_mid_transfer_is_reported_failed_not_raised():
    comm = FakeComm()
    ch = Channel(comm, Detector.ULFM)
    comm.post(1, TAG, {"x": 1}, arrives=False)
    assert ch.try_recv(1, TAG) is None
    comm.requests[0].error = MPI.ERR_PROC_FAILED  # ULFM: the sender died mid-send
    out = poll_in_thread(ch, [1], TAG, deadline_s=5.0)
    assert set(out.failed) == {1} and not out.timed_out and not out.messages
    assert ch.partial(1, TAG) is None
    assert [p.req for p in ch._abandoned] == [comm.requests[0]], "the failed receive is kept, not freed"


def test_partial_message_never_delays_a_short_deadline():
    """Every poll of a stalled message ends by its own deadline, however many times it is polled."""
    comm = FakeComm()
    ch = Channel(comm, Detector.TIMEOUT)
    comm.post(1, TAG, "never", arrives=False)
    for _ in range(3):
        out = poll_in_thread(ch, [1], TAG, deadline_s=0.05)
        assert set(out.timed_out) == {1} and out.partial == {1: len(comm.requests[0].payload)}
    assert len(comm.requests) == 1, "one matched receive, kept across polls"


def test_recv_one_on_a_stalled_message_raises_peer_timeout():
    from ftmpi.errors import PeerTimeout

    comm = FakeComm()
    ch = Channel(comm, Detector.TIMEOUT)
    comm.post(1, TAG, "stuck", arrives=False)
    with pytest.raises(PeerTimeout):
        ch.recv_one(1, TAG, 0.05, "a reply")


# ------------------------------------------------------------------------- the alive communicator rebuild
class FakeCollComm(FakeComm):
    """A communicator whose Shrink waits for the other survivors (an Event), as a real collective would."""

    def __init__(self, peers: threading.Event, members: list[int], log: list[str], gen: int = 0) -> None:
        super().__init__()
        self.peers, self.members, self.log, self.gen = peers, members, log, gen
        self.freed = False

    def Ack_failed(self) -> None:
        self.log.append(f"ack{self.gen}")

    def Shrink(self) -> FakeCollComm:
        self.log.append(f"shrink{self.gen}")
        assert self.peers.wait(30), "the other survivors never joined the Shrink"
        return FakeCollComm(self.peers, self.members, self.log, self.gen + 1)

    def Agree(self, flag: int) -> int:
        self.log.append(f"agree{self.gen}")
        return flag

    def Free(self) -> None:
        self.freed = True


def rebuild_channel(monkeypatch, peers: threading.Event, log: list[str]) -> Channel:
    comm = FakeCollComm(peers, [0, 1, 2], log)
    ch = Channel(comm, Detector.ULFM)
    monkeypatch.setattr(ch, "_world_ranks", lambda c: c.members)
    return ch


def test_rebuild_given_up_by_deadline_still_completes_and_the_next_one_runs(monkeypatch):
    """Issue 14, item 3: a worker gave up waiting (its caller's deadline) while rank 0 joined later. Its part
    of the rebuild must still complete (rank 0 completes it and records agreed: true), and the next rebuild
    must run on the communicator that one produced, on this rank as on every other."""
    peers, log = threading.Event(), []
    ch = rebuild_channel(monkeypatch, peers, log)
    assert ch.rebuild_alive([0, 1, 2], 1, timeout=0.05) is False  # rank 0 has not joined yet
    peers.set()  # rank 0 joins: the collective completes
    assert ch.rebuild_alive([0, 1, 2], 2, timeout=30) is True, "the second rebuild ran and agreed"
    assert log == ["ack0", "shrink0", "agree1", "ack1", "shrink1", "agree2"], "in order, chained communicators"
    st = ch.rebuild_status()
    assert st is not None and (st["epoch"], st["agreed"], st["pending"], st["members"]) == (2, True, False, [0, 1, 2])


def test_rebuild_start_never_blocks_and_a_later_rebuild_waits_for_the_previous(monkeypatch):
    peers, log = threading.Event(), []
    ch = rebuild_channel(monkeypatch, peers, log)
    assert ch.rebuild_result() is False and ch.rebuild_status() is None
    assert ch.rebuild_start([0, 1, 2], 1) is True
    assert ch.rebuild_start([0, 2], 2) is True  # another loss before the first rebuild finished
    assert ch.rebuild_result() is None
    st = ch.rebuild_status()
    assert st is not None and st["pending"] and st["epoch"] == 2 and st["agreed"] is None
    peers.set()
    end = time.monotonic() + 30
    while ch.rebuild_result() is None:
        assert time.monotonic() < end, "the rebuilds never finished"
        time.sleep(0.001)
    # the fake's shrunk communicator still holds 0, 1, 2, so epoch 2's members [0, 2] are not agreed on
    assert ch.rebuild_result() is False and log.count("shrink0") == 1 and log.count("shrink1") == 1


def test_no_rebuild_without_thread_multiple_said_once(monkeypatch):
    import ftmpi.comm as comm_mod

    peers, log = threading.Event(), []
    peers.set()
    ch = rebuild_channel(monkeypatch, peers, log)
    monkeypatch.setattr(comm_mod.MPI, "Query_thread", lambda: MPI.THREAD_SERIALIZED)
    assert ch.rebuild_alive([0, 1, 2], 1, timeout=5) is False
    assert log == [], "MPI must not be called from a helper thread without MPI_THREAD_MULTIPLE"
    assert ch.rebuild_start([0, 1, 2], 2) is False
    notes = ch.take_notes()
    assert len(notes) == 1 and "MPI_THREAD_MULTIPLE" in notes[0] and ch.take_notes() == []

"""The front-end profile's attribution of py-spy samples (benchmarks/profile_frontend.py)."""

import pytest

from benchmarks.profile_frontend import category, summarize

HANDLER = "_infer (genserve/serving/kserve.py:512)"
CALLBACK = "Handle._run (asyncio/events.py:80)"  # a loop callback: grpc's Cython below it is invisible
LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1922)"


GRPC_SHARE = "loop callbacks with no frame of ours (on grpcio: its Cython call handling)"
LOOP_SHARE = "the event loop itself (polling, ready queue)"


def test_our_innermost_frame_decides_even_inside_a_loop_callback():
    assert category([LOOP, CALLBACK, HANDLER]) == "RPC handlers (decode, submit, respond)"
    assert category([LOOP, CALLBACK, HANDLER, "submit (genserve/serving/batcher.py:160)"]).startswith("batcher")


def test_without_a_frame_of_ours_a_callback_is_grpc_and_the_rest_the_loop():
    assert category([LOOP, CALLBACK]) == GRPC_SHARE
    assert category([LOOP, CALLBACK, "wait (asyncio/tasks.py:427)"]) == GRPC_SHARE  # called from Cython
    assert category([LOOP]) == LOOP_SHARE
    assert category(["<module> (somewhere.py:1)"]) == "other"


def test_summary_shares_and_gil_fraction():
    collapsed = f"main;{LOOP};{CALLBACK} 30\nmain;{LOOP};{CALLBACK};{HANDLER} 10\nmain;{LOOP} 20\n"
    report = summarize(collapsed, rate=100, seconds=1.0)
    assert report["samples_with_gil"] == 60 and report["gil_held_fraction"] == pytest.approx(0.6)
    assert report["share_of_gil_samples"] == {
        GRPC_SHARE: 0.5,
        LOOP_SHARE: 0.333,
        "RPC handlers (decode, submit, respond)": 0.167,
    }

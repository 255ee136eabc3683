"""Side-by-side processes (``--workers``): a failure stops new commands from starting and
says why; the others' output is kept for the caller."""

from __future__ import annotations

from api import side_by_side


def test_a_failed_command_stops_the_ones_not_yet_started() -> None:
    seen: list[side_by_side.Ended] = []
    ended = side_by_side.run(
        [("bad", ["no-such-command"]), ("next", ["--help"]), ("last", ["--help"])],
        1,
        capture=True,
        on_end=seen.append,
    )
    assert [(e.name, e.code) for e in ended] == [("bad", 2), ("next", None), ("last", None)]
    assert "No such command" in ended[0].output and seen == ended[:1]


def test_commands_side_by_side_each_keep_their_output() -> None:
    ended = side_by_side.run([("a", ["--help"]), ("b", ["--help"])], 2, capture=True)
    assert [e.code for e in ended] == [0, 0] and all("Usage" in e.output for e in ended)
    assert side_by_side.threads_each(64) == 1

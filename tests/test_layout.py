"""Unit tests of ddmq.layout: every file name's ``format`` and ``parse``, the names ddmq 0.9.14
wrote, the near-misses that must not parse, and queue names."""

from __future__ import annotations

import os
import string
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ddmq import layout
from ddmq.errors import InvalidNameError
from ddmq.layout import DeadName, RequeueName, WaitingName, WorkName, message_id

# --- strategies ---------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
numbers = st.integers(min_value=0, max_value=10**20)
HEX = "0123456789abcdef"
# Message ids are uuid4().hex (lower-case hex); a waiting name accepts any letters and digits
# but "Z", which marks the claimer's tag in a work name.
hex_ids = st.one_of(st.uuids(version=4).map(lambda u: u.hex), st.text(HEX, min_size=1, max_size=40))
ids = st.one_of(hex_ids, st.text(ALNUM.replace("Z", ""), min_size=1, max_size=40))
waiting_names = st.builds(WaitingName, numbers, numbers, ids)
# The names a work name is made of: ddmq's ids, and claimer tags as claimer_tag() makes them
# (lower-case letters and digits), or none (ddmq 0.9).
hex_waiting_names = st.builds(WaitingName, numbers, numbers, hex_ids)
claimers = st.one_of(st.just(""), st.text(string.ascii_lowercase + string.digits, min_size=1,
                                          max_size=16))
reasons = st.one_of(st.sampled_from(layout.DEAD_REASONS),
                    st.text(string.ascii_lowercase + "_", min_size=1, max_size=20))
# what unique_token() makes, host.pid.random.count, and other dotted words
tokens = st.lists(st.text(ALNUM + "-_", min_size=1, max_size=12), min_size=1,
                  max_size=5).map(".".join)
# any text, and dotted names made of parts that real names have, and near-misses of them
name_parts = st.one_of(st.text(max_size=6), st.sampled_from(
    ["requeue", "Requeue", "spare", "rejected", "ddmq", "ddmqab", "DDMQab", "ddmq\u00e4", "999",
     "0", "12", "-1", "", " 1", "\u00b2", "\u0665", "\uff15", "\u0669\u0669", "ab-c"]))
# a real name with one field replaced by any short text (non-ASCII digits, signs, spaces...)
shaped_names = st.builds(
    lambda template, field, waiting: template.format(field=field, waiting=waiting.format()),
    st.sampled_from(["{field}.{waiting}", "{waiting}.{field}", "12.{waiting}.{field}",
                     "requeue.{field}.tok.{waiting}", "requeue.5.{field}.{waiting}",
                     "{field}.1.ddmqab", "1.{field}.ddmqab", "1.2.ddmq{field}"]),
    st.one_of(st.text(max_size=4),  # and digits of every script, superscripts, fractions...
              st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)),
    waiting_names)
any_names = st.one_of(st.text(max_size=60), shaped_names,
                      st.lists(name_parts, min_size=1, max_size=8).map(".".join))


def uuid_hex() -> str:
    return uuid.uuid4().hex


# --- round trips --------------------------------------------------------------------------------

@given(waiting_names)
@example(WaitingName(0, 0, "0"))
@example(WaitingName(999, 1, "6d8742dbde404d5ab556bf229151f66b"))
def test_waiting_name_round_trip(name):
    text = name.format()
    assert WaitingName.parse(text) == name
    assert text == f"{name.priority}.{name.queue_number}.ddmq{name.id}"
    assert message_id(text) == name.id


@given(numbers, hex_waiting_names, claimers)
def test_work_name_round_trip(expiry, waiting, claimer):
    work = WorkName(expiry, waiting.format(), claimer)
    text = work.format()
    assert WorkName.parse(text) == work
    assert text.startswith(f"{expiry}.{waiting.format()}") and text.endswith(claimer)
    if not claimer:
        assert text == f"{expiry}.{waiting.format()}"
    assert message_id(text) == waiting.id
    assert WaitingName.parse(text) is None, "a work name is never taken for a waiting one"


@given(numbers, numbers, hex_waiting_names, claimers)
def test_with_expiry_changes_only_the_expiry(expiry, later, waiting, claimer):
    work = WorkName(expiry, waiting.format(), claimer)
    moved = work.with_expiry(later)
    assert moved == WorkName(later, waiting.format(), claimer)
    assert WorkName.parse(moved.format()) == moved


def test_work_name_round_trip_with_real_ids_and_claimer_tags():
    for priority in (0, 999):
        waiting = WaitingName(priority, 1764050000123456789, uuid_hex()).format()
        work = WorkName(1764050600, waiting, layout.claimer_tag())
        parsed = WorkName.parse(work.format())
        assert parsed == work
        assert (parsed.expiry, parsed.waiting, parsed.claimer) == (1764050600, waiting,
                                                                  layout.claimer_tag())
        assert message_id(work.format()) == WaitingName.parse(waiting).id


def test_work_names_with_a_dotted_claimer_tag_parse():
    """``EXPIRY.PRIO.QNUM.ddmqID.CLAIMER``: the tag behind a dot, as ddmq wrote it before."""
    ident = uuid_hex()
    parsed = WorkName.parse(f"1764050600.999.1764050000123456789.ddmq{ident}.0f3a9c2e")
    assert parsed is not None
    assert (parsed.expiry, parsed.waiting, parsed.claimer) == (
        1764050600, f"999.1764050000123456789.ddmq{ident}", "0f3a9c2e")
    assert WorkName.parse(parsed.format()) == parsed
    assert message_id(parsed.format()) == ident


def test_work_name_defaults_to_no_claimer():
    assert WorkName(5, "1.2.ddmqab").format() == "5.1.2.ddmqab"
    assert WorkName(5, "1.2.ddmqab").claimer == ""


@given(reasons, waiting_names)
def test_dead_name_round_trip(reason, waiting):
    dead = DeadName(reason, waiting.format())
    text = dead.format()
    assert DeadName.parse(text) == dead
    assert message_id(text) == waiting.id
    assert WaitingName.parse(text) is None and WorkName.parse(text) is None


@given(numbers, tokens, waiting_names)
def test_requeue_name_round_trip(taken, token, waiting):
    requeue = RequeueName(taken, token, waiting.format())
    text = requeue.format()
    assert text.startswith(layout.REQUEUE_PREFIX)
    assert RequeueName.parse(text) == requeue
    assert message_id(text) == waiting.id
    for parse in (WaitingName.parse, WorkName.parse, DeadName.parse):
        assert parse(text) is None


def test_requeue_name_round_trip_with_real_tokens():
    waiting = WaitingName(0, 1764050000123456789, uuid_hex()).format()
    for _ in range(3):
        requeue = RequeueName(1764050000, layout.unique_token(), waiting)
        assert RequeueName.parse(requeue.format()) == requeue


@given(hex_waiting_names, claimers,
       st.sampled_from(["", "/root/q", "/root/q/work", "rel/q/dead"]))
def test_message_id_of_a_path(waiting, claimer, folder):
    for name in (waiting.format(), WorkName(7, waiting.format(), claimer).format(),
                 DeadName("rejected", waiting.format()).format()):
        path = os.path.join(folder, name) if folder else name
        assert message_id(path) == waiting.id


@pytest.mark.parametrize("name", ["", "ddmq.yaml", "tmp", "work", "dead", "spare.h.1.ab.1",
                                  "host.123.abcdef01.7", "ddmq.yaml.tmp-host.1.ab.1"])
def test_message_id_of_names_that_say_none(name):
    assert message_id(name) is None


# --- names written by ddmq 0.9.14 ---------------------------------------------------------------

#: 0.9.14's queue number is str(time.time()) without its dot: 15 to 17 digits today.
QNUMS_0_9_14 = ["176405000012345", "1764050000123456", "17640500001234567"]


@pytest.mark.parametrize("qnum", QNUMS_0_9_14)
@pytest.mark.parametrize("priority", ["999", "0", "10", "1000"])
def test_waiting_names_of_ddmq_0_9_14(priority, qnum):
    ident = uuid_hex()
    name = f"{priority}.{qnum}.ddmq{ident}"
    assert WaitingName.parse(name) == WaitingName(int(priority), int(qnum), ident)
    assert WorkName.parse(name) is None and DeadName.parse(name) is None
    assert message_id(name) == ident


@pytest.mark.parametrize("qnum", QNUMS_0_9_14)
def test_work_names_of_ddmq_0_9_14_have_no_claimer(qnum):
    ident = uuid_hex()
    name = f"1764050600.999.{qnum}.ddmq{ident}"
    assert WorkName.parse(name) == WorkName(1764050600, f"999.{qnum}.ddmq{ident}", "")
    assert WorkName.parse(name).format() == name
    assert WaitingName.parse(name) is None and DeadName.parse(name) is None
    assert message_id(name) == ident
    assert message_id(f"/root/queue_one/work/{name}") == ident


@pytest.mark.parametrize("name, parsed", [
    # the listing in the original's documentation (seeds/)
    ("999.3.ddmqfc24476c6708416caa2a101845dddd9a",
     WaitingName(999, 3, "fc24476c6708416caa2a101845dddd9a")),
    ("999.1.ddmq6d8742dbde404d5ab556bf229151f66b",
     WaitingName(999, 1, "6d8742dbde404d5ab556bf229151f66b")),
])
def test_names_in_the_documentation_of_ddmq_0_9(name, parsed):
    assert WaitingName.parse(name) == parsed


def test_work_name_in_the_documentation_of_ddmq_0_9():
    name = "1538638378.999.1.ddmq39eb64e1913143aa8d28d9158f089006"
    assert WorkName.parse(name) == WorkName(1538638378, "999.1.ddmq39eb64e1913143aa8d28d9158f089006")


# --- near-misses parse to None ------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "", "999", "999.123", "999.123.", "999.123.ddmq", "999.123.abc", "999.123.DDMQab",
    "999.123.Ddmqab", "999..ddmqab", ".123.ddmqab", "999.123.ddmqab.", ".999.123.ddmqab",
    "999.123.ddmqab.cd", "999.1.5.ddmqab",               # extra dots
    "-1.123.ddmqab", "+1.123.ddmqab", "1 .123.ddmqab", " 1.123.ddmqab", "0x10.1.ddmqab",
    "1e3.1.ddmqab", "1_000.1.ddmqab", "999.123.ddmqab-cd", "999.123.ddmqab_cd",
    "999.123.ddmq ab", "999.123.ddmqab\n", "999/123.ddmqab",
    "\u0669\u0669\u0669.123.ddmqab",                      # Arabic-Indic digits
    "999.\uff11\uff12\uff13.ddmqab",                      # fullwidth digits
    "\u00b29.1.ddmqab", "9.\u00b9.ddmqab",                 # superscripts: isdigit() but not int()
    "999.123.ddmq\u00e4b", "999.123.ddmq\u0663",           # non-ascii letters and digits in the id
])
def test_waiting_near_misses(name):
    assert WaitingName.parse(name) is None


@pytest.mark.parametrize("name", [
    "", "12", "12.", "12.999", "999.1.ddmqab", "x.999.1.ddmqab", "-12.999.1.ddmqab",
    "12 .999.1.ddmqab", "12..999.1.ddmqab", "12.999.1.ddmqab.", "12.999.1.ddmqab.cl-aim",
    "12.999.1.ddmqab.cl_aim", "12.999.1.ddmqab.a.b", "12.999.1.ddmqab..a", "12.999.1.ddmq.a",
    "\u0661\u0662.999.1.ddmqab", "\u00b2.999.1.ddmqab", "12.999.1.ddmqab.claim\u00e9",
    "12.999.1.ddmqab.\u0661", "12.\u0669.1.ddmqab", "rejected.999.1.ddmqab",
])
def test_work_near_misses(name):
    assert WorkName.parse(name) is None


@pytest.mark.parametrize("name", [
    "", "rejected", "rejected.", ".999.1.ddmqab", "Rejected.999.1.ddmqab",
    "REJECTED.999.1.ddmqab", "rejected1.999.1.ddmqab", "re-jected.999.1.ddmqab",
    "r\u00e9jected.999.1.ddmqab", "rejected .999.1.ddmqab", "rejected.999.1",
    "rejected.999.1.ddmqab.x", "rejected..999.1.ddmqab", "rejected.\u0669.1.ddmqab",
    "999.1.ddmqab", "12.999.1.ddmqab",
])
def test_dead_near_misses(name):
    assert DeadName.parse(name) is None


@pytest.mark.parametrize("name", [
    "", "requeue", "requeue.", "requeue.5", "requeue.5.999.1.ddmqab",  # no token
    "requeue.x.tok.999.1.ddmqab", "requeue.-5.tok.999.1.ddmqab", "requeue..tok.999.1.ddmqab",
    "Requeue.5.tok.999.1.ddmqab", "REQUEUE.5.tok.999.1.ddmqab", "requeue5.tok.999.1.ddmqab",
    "requeue.5.tok.999.1.ddmq", "requeue.5.tok.999.1", "requeue.5.tok.999.1.ddmqab.",
    "requeue.5.tok.999.x.ddmqab", "spare.h.1.ab.1", "h.1.ab.1", "999.1.ddmqab",
    "requeue.5.tok.\u0669.1.ddmqab",
])
def test_requeue_near_misses(name):
    assert RequeueName.parse(name) is None


@pytest.mark.parametrize("taken", ["\u0665", "\u00b2", "\uff15"])
def test_requeue_near_misses_with_non_ascii_digits(taken):
    """Non-ASCII digits in TAKEN: '\u0665'.isdigit() and int() reads it as 5; a superscript
    '\u00b2'.isdigit() too, but int() raises ValueError (fixed in b4ab8e9)."""
    assert RequeueName.parse(f"requeue.{taken}.tok.999.1.ddmqab") is None


@settings(max_examples=500)
@given(any_names)
def test_parsers_never_raise(name):
    for parse in (WaitingName.parse, WorkName.parse, DeadName.parse, RequeueName.parse):
        parse(name)
    message_id(name)


@given(any_names)
def test_what_parses_formats_back_to_a_name_that_parses_the_same(name):
    for kind in (WaitingName, WorkName, DeadName):
        parsed = kind.parse(name)
        if parsed is not None:
            assert kind.parse(parsed.format()) == parsed
    requeue = RequeueName.parse(name)
    if requeue is not None:
        assert RequeueName.parse(requeue.format()) == requeue


# --- the other names ----------------------------------------------------------------------------

def test_spare_and_temporary_names():
    spare = layout.spare_name()
    assert layout.is_spare(spare) and spare.startswith(layout.SPARE_PREFIX)
    temp = layout.temporary_name()
    assert not layout.is_spare(temp)
    for name in (spare, temp):
        assert os.sep not in name
        for parse in (WaitingName.parse, WorkName.parse, DeadName.parse, RequeueName.parse):
            assert parse(name) is None
    assert len({layout.temporary_name() for _ in range(1000)}) == 1000


def test_unique_tokens_differ_between_processes():
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    mine = layout.unique_token()
    with ctx.Pool(2) as pool:
        theirs = pool.starmap(_token_and_tag, [()] * 4)
    tokens = [mine] + [t for t, _ in theirs]
    assert len(set(tokens)) == len(tokens)
    tags = {tag for _, tag in theirs} | {layout.claimer_tag()}
    assert len(tags) >= 2, "a forked child must not keep its parent's claimer tag"
    for tag in tags:
        assert tag.isascii() and tag.isalnum()


def _token_and_tag():
    return layout.unique_token(), layout.claimer_tag()


def test_new_message_ids_are_hex_of_ddmq_09s_form_and_differ_between_forked_processes():
    import multiprocessing
    ids = [layout.new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for msg_id in ids:
        assert len(msg_id) == 32 and all(c in "0123456789abcdef" for c in msg_id)
        assert WaitingName.parse(WaitingName(2, 5, msg_id).format()).id == msg_id
    layout.new_message_id()  # the parent's generator has moved on: a child must not follow it
    with multiprocessing.get_context("fork").Pool(2) as pool:
        theirs = pool.starmap(_message_ids, [()] * 4)
    drawn = [i for batch in theirs for i in batch] + [layout.new_message_id() for _ in range(5)]
    assert len(set(drawn)) == len(drawn), "a forked child drew its parent's ids"


def _message_ids():
    return [layout.new_message_id() for _ in range(5)]


def test_host_has_no_separator():
    assert layout.HOST and "." not in layout.HOST and os.sep not in layout.HOST


# --- queue names --------------------------------------------------------------------------------

@pytest.mark.parametrize("queue", ["q", "Q", "tasks", "queue_one", "my-queue", "0", "_", "-",
                                   "a" * layout.MAX_QUEUE_NAME, "tmp", "work", "dead"])
def test_check_queue_name_accepts(queue):
    assert layout.check_queue_name(queue) == queue


@pytest.mark.parametrize("queue", [
    "", ".", "..", "a.b", "a/b", "/q", "q/", "a b", " q", "q\n", "q\x00", "ddmq.yaml", "q*",
    "caf\u00e9", "\u0661", "\uff51", "a" * (layout.MAX_QUEUE_NAME + 1), None, 5, b"q", ["q"],
])
def test_check_queue_name_refuses(queue):
    with pytest.raises(InvalidNameError):
        layout.check_queue_name(queue)


@given(st.text(ALNUM + "_-", min_size=1, max_size=layout.MAX_QUEUE_NAME))
def test_check_queue_name_accepts_every_name_of_allowed_characters(queue):
    assert layout.check_queue_name(queue) == queue


@given(st.text(min_size=1, max_size=20).filter(lambda s: any(c not in ALNUM + "_-" for c in s)))
def test_check_queue_name_refuses_any_other_character(queue):
    with pytest.raises(InvalidNameError):
        layout.check_queue_name(queue)


def test_an_id_with_the_claimer_mark_is_not_a_waiting_name():
    """"Z" separates a work name's id from its claimer's tag (ddmqIDZCLAIMER,
    a form ddmq 0.9's delete_message accepts), so no id may hold it."""
    assert WaitingName.parse("999.1.ddmqabZcd") is None
    work = WorkName.parse("1700000000.999.1.ddmqabZcd")
    assert work == WorkName(1700000000, "999.1.ddmqab", "cd") and work.format().endswith("abZcd")
    dotted = WorkName.parse("1700000000.999.1.ddmqab.cd")  # ddmq 1.0's form keeps its dot
    assert dotted is not None and dotted.format() == "1700000000.999.1.ddmqab.cd"

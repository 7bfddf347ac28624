"""The speech queue on its own: order, preemption, cuts; and what an utterance says was heard."""

from __future__ import annotations

import asyncio

from telephony.agents.base import SpeechOutcome
from telephony.outbound import SpeakerHooks, SpeechQueue, Utterance


def queue_with(*specs: tuple[str, bool], finished: list[Utterance] | None = None) -> SpeechQueue:
    """A queue holding one pending utterance per (text, preemptible)."""
    queue = SpeechQueue(SpeakerHooks(on_finished=finished.append if finished is not None else None))
    for text, preemptible in specs:
        queue.append(queue.create(text, interruptible=True, preemptible=preemptible))
    return queue


async def test_next_makes_the_oldest_pending_utterance_active() -> None:
    queue = queue_with(("first", False), ("second", False))
    first = await asyncio.wait_for(queue.next(), 1)
    assert first.text == "first" and queue.active == [first] and len(queue.pending) == 1
    assert queue.speaking_interruptibly and queue.busy


async def test_next_waits_until_something_is_appended() -> None:
    queue = queue_with()
    waiter = asyncio.ensure_future(queue.next())
    await asyncio.sleep(0)
    assert not waiter.done()
    utt = queue.create("late", interruptible=True, preemptible=False)
    queue.append(utt)
    assert await asyncio.wait_for(waiter, 1) is utt


async def test_a_cut_interrupts_every_active_utterance_and_keeps_only_what_it_is_told_to() -> None:
    finished: list[Utterance] = []
    queue = queue_with(("playing", False), ("rendering", False), ("legal notice", False),
                       ("chatter", False), finished=finished)
    playing, rendering = await queue.next(), await queue.next()
    notice, chatter = queue.pending
    notice.interruptible = False
    queue.cut(lambda u: 7 if u is playing else 0, keep=lambda u: not u.interruptible)
    assert playing.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert playing.future.result().played_ms == 7 * 20
    # both active utterances end, not only the first (the list is not walked while it shrinks)
    assert rendering.future.done() and rendering.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert chatter.future.result().outcome is SpeechOutcome.INTERRUPTED
    assert chatter.future.result().heard_text == ""
    assert list(queue.pending) == [notice] and not notice.future.done()
    assert notice.generation == queue.generation == 1  # it plays after the cut
    assert queue.active == [] and finished == [playing, rendering, chatter]


async def test_new_speech_preempts_only_when_everything_still_to_come_is_preemptible() -> None:
    assert not queue_with().preemptible_now  # nothing to give way
    assert queue_with(("hold music", True)).preemptible_now
    assert not queue_with(("hold music", True), ("notice", False)).preemptible_now
    queue = queue_with(("greeting", False), ("hold music", True))
    await queue.next()
    assert not queue.preemptible_now  # the greeting is playing and is not preemptible


async def test_the_queue_is_full_at_its_pending_limit() -> None:
    queue = SpeechQueue(SpeakerHooks(), max_pending=2)
    for text in ("one", "two"):
        assert not queue.full
        queue.append(queue.create(text, interruptible=True, preemptible=False))
    assert queue.full


async def test_drop_pending_and_resolve_all_settle_everything_and_log_it() -> None:
    finished: list[Utterance] = []
    queue = queue_with(("a", False), ("b", False), ("c", False), finished=finished)
    a = await queue.next()
    queue.drop_pending()
    assert [u.future.result().outcome for u in finished] == [SpeechOutcome.CANCELLED] * 2
    queue.resolve_all(SpeechOutcome.FAILED, lambda u: 0, error="gone")
    assert a.future.result().outcome is SpeechOutcome.FAILED and a.future.result().error == "gone"
    assert not queue.busy and len(finished) == 3 and queue.get(a.id) is None


async def test_heard_text_is_whole_segments_then_words_of_the_partly_played_one() -> None:
    queue = queue_with(("One two three. Four five six seven.", False))
    utt = await queue.next()
    utt.segment_started("One two three.")
    utt.frames_queued = 10
    utt.segment_ended(0)
    utt.segment_started("Four five six seven.")
    utt.frames_queued = 30
    utt.segment_ended(1)
    assert utt.heard(10) == "One two three."
    assert utt.heard(20) == "One two three. Four five"  # half of the second segment's frames
    assert utt.heard(5) == "One"
    utt.confirm_segment(0)
    assert utt.frames_confirmed == 10


async def test_speaking_interruptibly_follows_the_first_active_utterance_through_every_change() -> None:
    """A plain attribute kept up to date (the inbound path reads it per caller frame): it must
    follow ``active`` through next, finish, cut and resolve_all, and what the hooks see on finish."""
    seen_on_finish: list[bool] = []
    queue = SpeechQueue(SpeakerHooks(
        on_finished=lambda u: seen_on_finish.append(queue.speaking_interruptibly)))
    for text, interruptible in (("notice", False), ("chat", True), ("more", True), ("legal", False)):
        queue.append(queue.create(text, interruptible=interruptible, preemptible=False))
    assert not queue.speaking_interruptibly  # nothing active yet
    notice = await queue.next()
    assert not queue.speaking_interruptibly
    chat = await queue.next()
    assert not queue.speaking_interruptibly  # the caller still hears the notice
    queue.finish(notice)
    assert queue.speaking_interruptibly and seen_on_finish == [True]
    queue.finish(chat)
    assert not queue.speaking_interruptibly
    await queue.next()
    assert queue.speaking_interruptibly
    queue.cut(lambda u: 0, keep=lambda u: True)
    assert not queue.speaking_interruptibly and seen_on_finish[-1] is False
    legal = await queue.next()
    assert legal.text == "legal" and not queue.speaking_interruptibly
    queue.append(queue.create("late", interruptible=True, preemptible=False))
    queue.finish(legal)
    await queue.next()
    assert queue.speaking_interruptibly
    queue.resolve_all(SpeechOutcome.FAILED, lambda u: 0)
    assert not queue.speaking_interruptibly

"""Speech jobs of the relay client: message order kept across a slow ``play`` download, a bounded
table, failures of the call side settled as results, cleanup however a job ends."""

from __future__ import annotations

import asyncio

from telephony.agents.base import SpeechOutcome, SpeechResult
from telephony.agents.relay.speech_jobs import SpeechJobs, ready


class NoCall:
    """The jobs pass the call to each request's speak; these tests' requests do not use it."""


class Recorder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.results: list[SpeechResult] = []

    async def report_error(self, description: str) -> None:
        self.errors.append(description)

    async def settle(self, result: SpeechResult) -> None:
        self.results.append(result)


def played(text: str) -> SpeechResult:
    return SpeechResult(text=text, outcome=SpeechOutcome.PLAYED)


async def test_a_job_submits_only_after_the_one_before_it_even_when_ready_first() -> None:
    recorder = Recorder()
    jobs = SpeechJobs(NoCall(), recorder.report_error)  # type: ignore[arg-type]
    order: list[str] = []
    download_done = asyncio.Event()
    text_prepared = asyncio.Event()

    def speak(name: str):
        async def run(call) -> SpeechResult:
            order.append(name)
            return played(name)
        return run

    async def slow_play():
        await download_done.wait()
        return speak("play")

    async def text_ready():
        text_prepared.set()
        return speak("text")

    jobs.start(slow_play, text="play", settle=recorder.settle)
    jobs.start(text_ready, text="text", settle=recorder.settle)
    await text_prepared.wait()   # the text job ran up to its first wait: it must not have spoken
    download_done.set()
    await jobs.wait()
    assert order == ["play", "text"]


async def test_room_runs_out_at_the_limit_and_the_refusal_quotes_the_request() -> None:
    recorder = Recorder()
    jobs = SpeechJobs(NoCall(), recorder.report_error, limit=1)  # type: ignore[arg-type]
    gate = asyncio.Event()

    async def held(call) -> SpeechResult:
        await gate.wait()
        return played("held")

    assert await jobs.room_for("first")
    jobs.start(ready(held), text="held", settle=recorder.settle)
    assert not await jobs.room_for("Your balance is forty dollars.")
    assert recorder.errors == ["too many speech requests waiting (1); not spoken: "
                               "'Your balance is forty dollars.'"]
    gate.set()
    await jobs.wait()
    assert len(jobs) == 0 and await jobs.room_for("again")


async def test_a_call_side_exception_is_settled_as_a_failed_result() -> None:
    recorder = Recorder()
    jobs = SpeechJobs(NoCall(), recorder.report_error)  # type: ignore[arg-type]

    async def explode(call) -> SpeechResult:
        raise RuntimeError("engine exploded")

    jobs.start(ready(explode), text="Hello there", settle=recorder.settle)
    await jobs.wait()
    [result] = recorder.results
    assert (result.text, result.outcome, result.error) == (
        "Hello there", SpeechOutcome.FAILED, "RuntimeError: engine exploded")


async def test_cleanup_runs_when_a_job_is_cancelled_while_preparing() -> None:
    recorder = Recorder()
    jobs = SpeechJobs(NoCall(), recorder.report_error)  # type: ignore[arg-type]
    started = asyncio.Event()
    released: list[str] = []

    async def never_ready():
        started.set()
        await asyncio.Event().wait()

    jobs.start(never_ready, text="play", settle=recorder.settle, cleanup=lambda: released.append("play"))
    await started.wait()
    for task in jobs.tasks():
        task.cancel()
    await jobs.wait()
    assert released == ["play"] and recorder.results == []

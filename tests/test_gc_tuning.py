"""The collector is tuned once the bridge has started (telephony/app.py ``tuned_gc``): the start-up
heap frozen, young collections far apart; and put back as it was when the app stops."""

from __future__ import annotations

import gc

from telephony.app import GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD, create_app
from telephony.config import settings_from_env
from tts_core.engines.synthetic import SyntheticEngine


async def _serving_gc_state(env: dict[str, str]) -> tuple[int, tuple[int, int, int]]:
    settings = settings_from_env(env, insecure_dev=True, stt="off", engine="synthetic")
    app = create_app(settings, engine=SyntheticEngine())
    async with app.router.lifespan_context(app):
        return gc.get_freeze_count(), gc.get_threshold()


async def test_a_started_bridge_freezes_its_start_up_heap_and_collects_less_often() -> None:
    before = gc.get_threshold()
    frozen, threshold = await _serving_gc_state({"VOICE_BRIDGE_GC_GEN0_THRESHOLD": "40000"})
    assert frozen > 0
    assert threshold == (40_000, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # put back on stop


async def test_the_default_threshold_is_the_documented_one_and_zero_leaves_gc_alone() -> None:
    _, threshold = await _serving_gc_state({})
    assert threshold[0] == 50_000
    before = gc.get_threshold()
    frozen, threshold = await _serving_gc_state({"VOICE_BRIDGE_GC_GEN0_THRESHOLD": "0"})
    assert frozen == 0 and threshold == before

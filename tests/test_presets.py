"""presets.yaml: what ships, and how a broken preset file is reported (tts_core.presets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_core.presets import (
    DEFAULT_PRESET,
    DEFAULT_PRESETS_PATH,
    Preset,
    PresetBook,
    PresetError,
    load_presets,
    parse_presets,
)

SHIPPED = ("balanced", "expressive", "fast", "clone_fidelity", "realtime", "adaptive")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ---- the shipped file --------------------------------------------------------------------------
def test_shipped_presets_file_loads_with_every_documented_preset() -> None:
    book = load_presets(DEFAULT_PRESETS_PATH)
    assert set(SHIPPED) <= set(book.names())
    assert book.default == DEFAULT_PRESET == "balanced"
    for name in SHIPPED:
        preset = book.get(name)
        assert isinstance(preset, Preset)
        assert preset.name == name


def test_adaptive_preset_starts_small_then_continues_larger() -> None:
    adaptive = load_presets().get("adaptive")
    assert adaptive.first_chunk_size == 12
    assert adaptive.continuation_chunk_size == 24
    assert adaptive.segmentation.first_min_clause_chars is not None
    assert adaptive.segmentation.first_min_clause_chars < adaptive.segmentation.min_clause_chars


def test_shipped_presets_have_the_documented_character() -> None:
    book = load_presets()
    fast, realtime, balanced = book.get("fast"), book.get("realtime"), book.get("balanced")
    assert fast.speed > 1.0
    assert realtime.chunk_size < balanced.chunk_size
    assert realtime.segmentation.max_chars < balanced.segmentation.max_chars
    assert book.get("clone_fidelity").cfg_weight > balanced.cfg_weight
    assert book.get("expressive").exaggeration > balanced.exaggeration


def test_generation_params_leave_out_name_segmentation_and_unset_values() -> None:
    params = load_presets().get("balanced").generation_params()
    assert "name" not in params
    assert "segmentation" not in params
    assert "first_chunk_size" not in params
    assert params["chunk_size"] == 25
    assert params["temperature"] == pytest.approx(0.8)


def test_presets_are_immutable() -> None:
    preset = load_presets().get("balanced")
    with pytest.raises(ValueError):
        preset.chunk_size = 3  # type: ignore[misc]


# ---- lookup ------------------------------------------------------------------------------------
def test_get_without_a_name_returns_the_default() -> None:
    book = load_presets()
    assert book.get(None).name == "balanced"
    assert book.get("").name == "balanced"
    assert "fast" in book
    assert "nope" not in book


def test_unknown_preset_name_lists_the_known_ones() -> None:
    book = load_presets()
    with pytest.raises(PresetError) as info:
        book.get("turbo")
    message = str(info.value)
    assert "'turbo'" in message
    for name in SHIPPED:
        assert name in message


def test_default_must_name_a_defined_preset() -> None:
    with pytest.raises(PresetError, match="default preset 'fast' is not defined"):
        parse_presets({"default": "fast", "presets": {"balanced": {}}})
    with pytest.raises(PresetError, match="no presets defined"):
        PresetBook({})
    book = parse_presets({"default": "fast", "presets": {"fast": {"chunk_size": 10}}})
    assert book.get(None).chunk_size == 10


# ---- invalid files -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("chunk_sise: 20", "chunk_sise", "Extra inputs are not permitted"),
        ("chunk_size: big", "chunk_size", "valid integer"),
        ("chunk_size: 2.5", "chunk_size", "valid integer"),
        ("temperature: [0.8]", "temperature", "valid number"),
        ("speed: 3.0", "speed", "less than or equal to 2"),
        ("temperature: 0", "temperature", "greater than 0"),
        ("cfg_weight: -0.1", "cfg_weight", "greater than or equal to 0"),
        ("chunk_size: 0", "chunk_size", "greater than or equal to 1"),
        ("segmentation: {max_chars: 5}", "segmentation.max_chars", "greater than or equal to 20"),
        ("segmentation: {min_clause: 5}", "segmentation.min_clause", "Extra inputs are not permitted"),
        ("segmentation: 12", "segmentation", "valid dictionary"),
    ],
)
def test_invalid_value_names_the_file_preset_and_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    path = write(tmp_path, f"presets:\n  balanced: {{}}\n  fast:\n    {body}\n")
    with pytest.raises(PresetError) as info:
        load_presets(path)
    message = str(info.value)
    assert str(path) in message
    assert "preset 'fast'" in message
    assert f"{key}:" in message
    assert problem in message


def test_first_chunk_larger_than_continuation_is_rejected() -> None:
    data = {"presets": {"balanced": {"first_chunk_size": 30, "continuation_chunk_size": 10}}}
    with pytest.raises(PresetError, match=r"preset 'balanced'.*first_chunk_size must not exceed"):
        parse_presets(data)


def test_several_problems_in_one_preset_are_all_reported() -> None:
    data = {"presets": {"balanced": {"speed": 9, "chunk_size": "x"}}}
    with pytest.raises(PresetError) as info:
        parse_presets(data, source="p.yaml")
    assert "speed:" in str(info.value)
    assert "chunk_size:" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected a mapping with a 'presets' mapping"),
        ("- balanced\n- fast\n", "expected a mapping with a 'presets' mapping"),
        ("presets: [balanced]\n", "expected a mapping with a 'presets' mapping"),
        ("presets:\n  balanced: 3\n", "preset 'balanced' must be a mapping"),
        ("presets:\n  balanced: {}\nextra: 1\n", "unknown top-level key(s) ['extra']"),
    ],
)
def test_wrong_document_shape_is_a_preset_error(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PresetError) as info:
        load_presets(path)
    assert problem in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_preset_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(PresetError, match="cannot read presets file") as info:
        load_presets(missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml_is_a_preset_error(tmp_path: Path) -> None:
    path = write(tmp_path, "presets:\n  balanced: {chunk_size: 25\n  fast: [\n")
    with pytest.raises(PresetError, match="invalid YAML") as info:
        load_presets(path)
    assert str(path) in str(info.value)


# ---- read once ---------------------------------------------------------------------------------
async def test_the_presets_file_is_read_once_when_the_settings_are_validated(tmp_path: Path) -> None:
    """The bridge serves the presets its settings validated: the file is not read a second time
    (here it is gone by the time the bridge starts, and the bridge still has every preset)."""
    from telephony.config import settings_from_env
    from telephony.services import Bridge
    from tts_core.engines.synthetic import SyntheticEngine

    path = write(tmp_path, DEFAULT_PRESETS_PATH.read_text(encoding="utf-8"))
    settings = settings_from_env({}, insecure_dev=True, stt="off", engine="synthetic",
                                 presets_path=path)
    path.unlink()
    bridge = await Bridge.start(settings, engine=SyntheticEngine())
    try:
        assert bridge.presets is settings.preset_book()
        assert set(SHIPPED) <= set(bridge.presets.names())
    finally:
        await bridge.aclose()


def test_an_unknown_preset_is_a_422_unknown_preset_and_still_a_preset_error() -> None:
    from tts_core.errors import Unprocessable
    from tts_core.presets import UnknownPreset

    with pytest.raises(UnknownPreset) as unknown:
        load_presets(DEFAULT_PRESETS_PATH).get("loud")
    assert isinstance(unknown.value, PresetError) and isinstance(unknown.value, ValueError)
    assert isinstance(unknown.value, Unprocessable)
    assert (unknown.value.http_status, unknown.value.kind) == (422, "unknown_preset")

"""Chunking and generation presets (``presets.yaml``), validated once at load time.

A typo in a preset must stop the server at start, not surface as odd audio on a live call, so
models forbid unknown keys and bound every number.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tts_core.errors import InvalidInput, Unprocessable

DEFAULT_PRESETS_PATH = Path(__file__).resolve().parent.parent / "presets.yaml"
DEFAULT_PRESET = "balanced"


class PresetError(InvalidInput, ValueError):
    """A preset file is invalid, or a preset name is unknown (``UnknownPreset``).

    Invalid input to the loader; at start-up ``Settings`` turns it into a ``ConfigError``.
    """

    kind = "invalid_presets"


class UnknownPreset(PresetError, Unprocessable):
    """A request (webhook, ``/warmup``) names a preset that is not defined: 422 ``unknown_preset``."""

    kind = "unknown_preset"


class SegmentationSettings(BaseModel):
    """How streamed agent text is cut into speakable segments."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_clause_chars: int = Field(40, ge=1, le=1000)
    """Cut at a clause boundary (, ; : dash) once the segment is at least this long."""
    first_min_clause_chars: int | None = Field(None, ge=1, le=1000)
    """Smaller threshold for the first segment of a turn, so first audio comes sooner."""
    max_chars: int = Field(240, ge=20, le=2000)
    """Cut at the last word boundary before this length even without punctuation."""


class Preset(BaseModel):
    """Generation parameters of one preset. Engines use what they understand.

    Strict: ``chunk_size: true`` or ``temperature: "0.9"`` are typos, not values to coerce.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    exaggeration: float = Field(0.5, ge=0.0, le=2.0)
    cfg_weight: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(0.8, gt=0.0, le=2.0)
    chunk_size: int = Field(25, ge=1, le=200)
    first_chunk_size: int | None = Field(None, ge=1, le=200)
    continuation_chunk_size: int | None = Field(None, ge=1, le=200)
    s3gen_steps: int = Field(10, ge=1, le=100)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    segmentation: SegmentationSettings = SegmentationSettings()

    @model_validator(mode="after")
    def _first_chunk_not_larger(self) -> Preset:
        if self.first_chunk_size and self.continuation_chunk_size and (
            self.first_chunk_size > self.continuation_chunk_size
        ):
            raise ValueError("first_chunk_size must not exceed continuation_chunk_size")
        return self

    def generation_params(self) -> dict[str, float]:
        """The engine-facing parameters (everything but name and segmentation)."""
        return self.model_dump(exclude={"name", "segmentation"}, exclude_none=True)


class PresetBook:
    """All presets by name; ``get`` raises on an unknown name instead of falling back."""

    def __init__(self, presets: dict[str, Preset], default: str = DEFAULT_PRESET) -> None:
        if not presets:
            raise PresetError("no presets defined")
        if default not in presets:
            raise PresetError(f"default preset {default!r} is not defined")
        self._presets = presets
        self.default = default

    def get(self, name: str | None) -> Preset:
        if name is None or name == "":
            return self._presets[self.default]
        try:
            return self._presets[name]
        except KeyError:
            raise UnknownPreset(
                f"unknown preset {name!r}; known presets: {', '.join(sorted(self._presets))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._presets)

    def __contains__(self, name: object) -> bool:
        return name in self._presets


def parse_presets(data: object, source: str = "presets") -> PresetBook:
    """Validate a parsed YAML document; errors name the preset and the key."""
    if not isinstance(data, dict) or not isinstance(data.get("presets"), dict):
        raise PresetError(f"{source}: expected a mapping with a 'presets' mapping")
    unknown_top = set(data) - {"presets", "default"}
    if unknown_top:
        raise PresetError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}")
    presets: dict[str, Preset] = {}
    for name, body in data["presets"].items():
        if not isinstance(body, dict):
            raise PresetError(f"{source}: preset {name!r} must be a mapping")
        if "name" in body:
            raise PresetError(f"{source}: preset {name!r}: name: the preset's name is its key")
        try:
            presets[str(name)] = Preset(name=str(name), **body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'preset'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PresetError(f"{source}: preset {name!r}: {problems}") from None
    try:
        return PresetBook(presets, default=str(data.get("default", DEFAULT_PRESET)))
    except PresetError as exc:
        raise PresetError(f"{source}: {exc}") from None


def load_presets(path: str | Path = DEFAULT_PRESETS_PATH) -> PresetBook:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PresetError(f"cannot read presets file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: invalid YAML: {exc}") from None
    return parse_presets(data, source=str(path))

"""Settings shared by every room: one object, from environment variables or code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medagent.imaging.deid_secret import configured_secret
from medagent.imaging.limits import ImageLimits


def _default_home() -> Path:
    return Path(user_data_dir("medagent", appauthor=False))


class Settings(BaseSettings):
    """``MEDAGENT_*`` environment variables override the defaults (e.g. ``MEDAGENT_WEIGHTS_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="MEDAGENT_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="artifacts, secrets and databases live here")
    weights_dir: Path | None = Field(
        default=None, description="folder searched first for model weight files (then <home>/weights)")
    xrv_cache_dir: Path = Field(
        default=Path("~/.torchxrayvision/models_data").expanduser(),
        description="TorchXRayVision's own weight cache (file names as in its release URLs)",
    )
    workspace: Path | None = Field(default=None, description="when set, input files must resolve inside it")
    device: str | None = Field(default=None, description="force 'cpu' or 'cuda'; default picks cuda when present")
    model_cache_mb: int = Field(default=4096, gt=0)
    max_batch_size: int = Field(default=16, ge=1)
    max_batch_wait_ms: float = Field(default=5.0, ge=0)
    allow_untrained_test_only: bool = Field(
        default=False,
        description="TEST ONLY: build experts with random weights when real ones are missing; outputs say untrained",
    )
    limits: ImageLimits = Field(default_factory=ImageLimits)
    plugins: bool = Field(default=True, description="offer the tools of installed plugins (entry-point group "
                                                    "medagent.experts); false: built-in and your own tools only")
    send_burned_in_images: bool = Field(
        default=False,
        description="send images whose DICOM says BurnedInAnnotation=YES (text in the pixels, possibly identifying) "
                    "to image-reading planners; by default they are withheld, and only experts see them",
    )
    bundles_dir: Path | None = Field(default=None, description="MONAI bundle folders; default <home>/bundles")
    volume_bundle: str = Field(default="spleen_ct_segmentation", description="the bundle segment_volume uses")
    text_index_dir: Path | None = Field(default=None, description="report/guideline index; default <home>/indexes/text")
    image_index_dir: Path | None = Field(default=None, description="image index; default <home>/indexes/images")
    image_encoder_dir: Path | None = Field(
        default=None, description="folder of a RAD-DINO-style encoder, for image indexes built with it")
    expert_cards: list[Path] = Field(
        default_factory=list, max_length=64,
        description="family cards (YAML/JSON) to offer as experts, besides those in <home>/experts/; "
                    "MEDAGENT_EXPERT_CARDS takes a JSON list")
    grounding_model_dir: Path | None = Field(
        default=None, description="folder of a transformers grounding model (phrase -> boxes); none by default")
    deid_secret: SecretStr | None = Field(
        default=None, description="de-identification key (at least 16 bytes); default <home>/deid.secret, "
                                  "created on first use. Never printed: it links pseudonyms to identifiers")

    @field_validator("deid_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("deid_secret")
    @classmethod
    def _valid_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # SecretInvalid is not a ValueError: it leaves pydantic as is, so the value never reaches an error message
        if value is not None:
            configured_secret(value.get_secret_value())
        return value

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def experts_dir(self) -> Path:
        """Family cards placed here are offered as experts (sorted by file name)."""
        return self.home / "experts"

    @property
    def bundle_dir(self) -> Path:
        return (self.bundles_dir or self.home / "bundles") / self.volume_bundle

    @property
    def text_index(self) -> Path:
        return self.text_index_dir or self.home / "indexes" / "text"

    @property
    def image_index(self) -> Path:
        return self.image_index_dir or self.home / "indexes" / "images"

    def weight_dirs(self) -> list[Path]:
        """Where weight files are looked for, in order: ``weights_dir`` when set, then ``<home>/weights``."""
        dirs = [self.weights_dir.expanduser()] if self.weights_dir else []
        return [*dirs, self.home / "weights"]

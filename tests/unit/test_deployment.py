"""The deployment's configuration checked as a whole: stages, prices, the reference tier."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from services.shared.deployment import check_optional, check_pipeline, check_priced, load_pricebook
from services.shared.settings import ConfigError, ConfigFileError, ServiceSettings, load_settings
from services.shared.validation import summary

pytestmark = pytest.mark.unit
PRICEBOOK = str(Path(__file__).resolve().parents[2] / "infra/config/pricebook.yaml")


def test_the_default_pipeline_passes() -> None:
    check_pipeline(["cache", "infer"])
    check_pipeline(["infer"])
    check_optional(["cache"])
    check_optional([])


@pytest.mark.parametrize(("optional", "message"), [
    (["infer"], r"SF_OPTIONAL_STAGES\.0: 'infer' cannot be optional"),
    (["cache", "cahce"], r"SF_OPTIONAL_STAGES\.1: 'cahce' is not a stage skinflint has"),
])
def test_a_bad_optional_stage_names_the_variable_and_the_entry(optional: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_optional(optional)


@pytest.mark.parametrize(("pipeline", "message"), [
    (["classify", "infer"],
     r"SF_PIPELINE\.0: 'classify' is not a stage skinflint has \(known stages: cache, classifier, infer\)"),
    (["infer", "infer"], r"SF_PIPELINE\.1: stage 'infer' is listed twice"),
    ([], r"SF_PIPELINE: the pipeline is empty"),
    (["probe"], r"SF_PIPELINE\.0: 'probe' is not a stage"),
])
def test_a_bad_pipeline_names_the_variable_and_the_entry(pipeline: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_pipeline(pipeline)


def test_inference_must_end_the_pipeline() -> None:
    with pytest.raises(ConfigError, match=r"SF_PIPELINE: the last stage must be 'infer'.*not 'probe'"):
        check_pipeline(["infer", "probe"], known=("infer", "probe"))


def test_a_tier_without_a_price_names_the_setting_and_the_price_book() -> None:
    book = load_pricebook(PRICEBOOK)
    check_priced({"SF_MODELS.smollm2-135m": "small", "SF_TIER": "large"}, book, PRICEBOOK)
    with pytest.raises(ConfigError) as err:
        check_priced({"SF_MODELS.gold-model": "gold"}, book, PRICEBOOK)
    assert str(err.value).startswith("SF_MODELS.gold-model: tier 'gold' has no price in ")
    assert "pricebook.yaml (tiers.gold is missing; priced tiers: large, small)" in str(err.value)


def test_a_price_book_with_the_retired_reference_tier_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "pricebook.yaml"
    path.write_text("reference_tier: large\n" + Path(PRICEBOOK).read_text())
    with pytest.raises(ConfigFileError, match=r"pricebook\.yaml: reference_tier: no longer used"):
        load_pricebook(str(path))


class Knobs(ServiceSettings):
    slots: int = Field(default=4, ge=1)


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_SLOTS", "0")
    with pytest.raises(ConfigError, match=r"environment: SF_SLOTS: Input should be greater than or equal to 1"):
        load_settings(Knobs)


def test_validation_summary_is_path_then_reason_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as err:
        Knobs(slots=0, drain_timeout_s=-1, otel_sample_ratio=3)
    text = summary(err.value, limit=2)
    assert text == ("otel_sample_ratio: Input should be less than or equal to 1; "
                    "drain_timeout_s: Input should be greater than 0 (and 1 more)")

"""meshllm.records.cost: the price table, energy, and usage priced."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshllm.errors import ConfigError
from meshllm.records.cost import (
    MAX_PRICE_FILE_BYTES,
    EnergyPrice,
    Price,
    PriceTable,
    energy_joules,
    request_cost,
    summarize,
)


@pytest.fixture
def shipped() -> PriceTable:
    return PriceTable.load(None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return path


def test_shipped_table_has_the_well_known_models(shipped: PriceTable) -> None:
    assert shipped.price("openai:gpt-4o") == Price(2.5, 10.0)
    assert shipped.price("openai:gpt-4o-mini") == Price(0.15, 0.6)
    for model in (
        "openai:gpt-4.1",
        "openai:gpt-4.1-mini",
        "anthropic:claude-sonnet-4-20250514",
        "anthropic:claude-3-5-haiku-20241022",
        "google:gemini-2.0-flash",
        "google:gemini-1.5-pro",
    ):
        assert shipped.price(model) is not None, model
    for price in shipped.models.values():
        assert 0 < price.input_per_mtok <= price.output_per_mtok


def test_price_lookup_exact_then_without_provider_prefix(tmp_path: Path) -> None:
    table = PriceTable.load(
        write(tmp_path, '[models."my-model"]\ninput_per_mtok = 1\noutput_per_mtok = 2\n')
    )
    assert table.price("my-model") == Price(1.0, 2.0)
    assert table.price("openai:my-model") == Price(1.0, 2.0)
    assert table.price("google:my-model") == Price(1.0, 2.0)
    # only provider prefixes are stripped: "llama3:8b" is an Ollama tag, not a provider
    assert table.price("local:my-model") is None
    assert table.price("unknown-model") is None
    assert table.price("") is None


def test_bare_name_does_not_match_a_prefixed_entry(shipped: PriceTable) -> None:
    # a local model called "gpt-4o" is not OpenAI's: it costs energy, not list price
    assert shipped.price("gpt-4o") is None


def test_user_file_overlays_the_shipped_table(tmp_path: Path, shipped: PriceTable) -> None:
    path = write(
        tmp_path,
        '[models."openai:gpt-4o"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8\n'
        '[models."mistral:large"]\ninput_per_mtok = 0.5\noutput_per_mtok = 1.5\n',
    )
    table = PriceTable.load(path)
    assert table.price("openai:gpt-4o") == Price(2.0, 8.0)
    assert table.price("mistral:large") == Price(0.5, 1.5)
    assert table.price("openai:gpt-4o-mini") == shipped.price("openai:gpt-4o-mini")
    assert len(table.models) == len(shipped.models) + 1


def test_empty_user_file_is_the_shipped_table(tmp_path: Path, shipped: PriceTable) -> None:
    assert PriceTable.load(write(tmp_path, "# nothing to change\n")) == shipped


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[models.x\n", "not valid TOML"),
        ("[model.x]\ninput_per_mtok = 1\noutput_per_mtok = 2\n", "unknown key 'model'"),
        ("models = 3\n", "must be a table"),
        ("[models]\nx = 3\n", "must be a table"),
        ("[models.x]\ninput_per_mtok = 1\n", "needs exactly"),
        ("[models.x]\ninput_per_mtok = 1\noutput_per_mtok = 2\nextra = 1\n", "needs exactly"),
        ('[models.x]\ninput_per_mtok = "1"\noutput_per_mtok = 2\n', "must be a number"),
        ("[models.x]\ninput_per_mtok = -1\noutput_per_mtok = 2\n", "must be a number"),
        ("[models.x]\ninput_per_mtok = inf\noutput_per_mtok = 2\n", "must be a number"),
        ("[models.x]\ninput_per_mtok = true\noutput_per_mtok = 2\n", "must be a number"),
    ],
)
def test_bad_price_file_is_a_config_error(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        PriceTable.load(path)
    message = str(caught.value)
    assert reason in message
    assert str(path) in message
    assert "\n" not in message


def test_unreadable_price_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PriceTable.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        PriceTable.load(tmp_path)
    big = tmp_path / "big.toml"
    big.write_text("#" * (MAX_PRICE_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        PriceTable.load(big)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        PriceTable.load(binary)


def test_energy_joules_split_among_concurrent_requests() -> None:
    assert energy_joules(100.0, 2.0, 1) == 200.0
    assert energy_joules(100.0, 2.0, 4) == 50.0
    assert energy_joules(100.0, 2.0, 0) == 200.0
    with pytest.raises(ValueError):
        energy_joules(-1.0, 2.0, 1)


def test_energy_price_must_be_a_price() -> None:
    with pytest.raises(ConfigError):
        EnergyPrice(-0.1)
    assert EnergyPrice(0.25, "EUR").currency == "EUR"


def test_request_cost_table_then_energy_then_unknown(shipped: PriceTable) -> None:
    energy = EnergyPrice(0.30)
    # 1,000 in at 2.50 + 500 out at 10.00 per 1M tokens
    assert request_cost(
        model="openai:gpt-4o",
        tokens_in=1000,
        tokens_out=500,
        energy_j=7.2e6,
        prices=shipped,
        energy=energy,
    ) == pytest.approx(0.0075, rel=1e-12)
    # 7.2 MJ = 2 kWh at 0.30
    assert request_cost(
        model="gemma",
        tokens_in=1000,
        tokens_out=500,
        energy_j=7.2e6,
        prices=shipped,
        energy=energy,
    ) == pytest.approx(0.6, rel=1e-12)
    assert (
        request_cost(
            model="gemma", tokens_in=1, tokens_out=1, energy_j=None, prices=shipped, energy=energy
        )
        is None
    )
    assert (
        request_cost(
            model="gemma", tokens_in=1, tokens_out=1, energy_j=3.6e6, prices=shipped, energy=None
        )
        is None
    )


def test_summarize_figures_on_known_inputs(shipped: PriceTable) -> None:
    groups = [
        {
            "key_id": "k1",
            "model": "openai:gpt-4o-mini",
            "requests": 4,
            "errors": 1,
            "tokens_in": 600_000,
            "tokens_out": 400_000,
            "energy_j": None,
            "latency_ms_sum": 2000.0,
            "bucket": 1_700_000_000,
        },
        {
            "key_id": "k1",
            "model": "gemma",
            "requests": 8,
            "errors": 0,
            "tokens_in": 1500,
            "tokens_out": 500,
            "energy_j": 1.8e6,
            "latency_ms_sum": 800.0,
        },
        {
            "key_id": "",
            "model": "qwen",
            "requests": 2,
            "errors": 2,
            "tokens_in": 0,
            "tokens_out": 0,
            "energy_j": None,
            "latency_ms_sum": 10.0,
        },
        {
            "key_id": "",
            "model": "",
            "requests": 0,
            "errors": 0,
            "tokens_in": None,
            "tokens_out": None,
            "energy_j": 0.0,
            "latency_ms_sum": 0.0,
        },
    ]
    original = [dict(group) for group in groups]
    cloud, local, unknown, empty = summarize(groups, shipped, EnergyPrice(0.20, "EUR"))
    assert groups == original  # not modified

    # 0.6 M in at 0.15 + 0.4 M out at 0.60 = 0.09 + 0.24 USD
    assert cloud["cost"] == pytest.approx(0.33, rel=1e-12)
    assert cloud["cost_per_request"] == pytest.approx(0.0825, rel=1e-12)
    assert cloud["cost_per_mtok"] == pytest.approx(0.33, rel=1e-12)
    assert cloud["cost_source"] == "price_table" and cloud["currency"] == "USD"
    assert cloud["energy_kwh"] is None
    assert cloud["bucket"] == 1_700_000_000 and cloud["errors"] == 1

    # 1.8 MJ = 0.5 kWh at 0.20 EUR = 0.10 EUR over 8 requests, 2,000 tokens
    assert local["energy_kwh"] == pytest.approx(0.5, rel=1e-12)
    assert local["cost"] == pytest.approx(0.1, rel=1e-12)
    assert local["cost_per_request"] == pytest.approx(0.0125, rel=1e-12)
    assert local["cost_per_mtok"] == pytest.approx(50.0, rel=1e-12)
    assert local["cost_source"] == "energy" and local["currency"] == "EUR"

    assert unknown["cost"] is None and unknown["cost_source"] is None
    assert unknown["cost_per_request"] is None and unknown["cost_per_mtok"] is None
    assert unknown["currency"] is None and unknown["energy_kwh"] is None

    assert empty["cost"] == 0.0 and empty["cost_source"] == "energy"
    assert empty["cost_per_request"] is None and empty["cost_per_mtok"] is None


def test_summarize_without_energy_price_leaves_local_cost_unknown(shipped: PriceTable) -> None:
    (row,) = summarize(
        [{"model": "gemma", "requests": 1, "tokens_in": 1, "tokens_out": 1, "energy_j": 3.6e6}],
        shipped,
        None,
    )
    assert row["cost"] is None
    assert row["energy_kwh"] == pytest.approx(1.0)


def test_a_gpu_node_is_costed_by_its_measured_power_else_the_configured_cpu_figure() -> None:
    from meshllm.records.cost import serving_watts

    gpus = {"gpus": [{"name": "A", "power_w": 210.5}, {"name": "B", "power_w": 90}]}
    assert serving_watts(gpus, 65.0) == 300.5
    # A GPU that reads no power, or nonsense, is no measurement: the CPU figure stands.
    unread = {"gpus": [{"name": "A", "power_w": None}, {"name": "B", "power_w": -5},
                       {"name": "C", "power_w": True}, {"name": "D", "power_w": 1e9}]}  # fmt: skip
    assert serving_watts(unread, 65.0) == 65.0
    assert serving_watts({"gpus": []}, 65.0) == serving_watts(None, 65.0) == 65.0
    assert serving_watts(None, 0) is None  # nothing configured: unknown, not free

"""synthmix.data_mixers.verifier: synthetic examples scored by a reference model (here the tiny trained base model of
conftest.py) and dropped when less likely than the real text; counted in the source report, cached in the
store's cleaning entry; its bad settings are one-line errors."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from synthmix.data_mixers import verifier as verifier_module
from synthmix.data_mixers.builtin import builtin_texts
from synthmix.data_mixers.config import VerifierConfig
from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.verifier import keep_threshold, model_identity
from synthmix.errors import ConfigError
from synthmix.trainer.config import load_config


def test_the_threshold_is_the_real_quantile_or_the_absolute_limit() -> None:
    ppls = [float(k) for k in range(1, 11)] + [math.inf]  # an unscorable example counts for nothing
    assert keep_threshold(ppls, VerifierConfig(model="m", quantile=0.9)) == pytest.approx(9.1)
    assert keep_threshold(ppls, VerifierConfig(model="m", quantile=0.5)) == pytest.approx(5.5)
    assert keep_threshold(ppls, VerifierConfig(model="m", max_ppl=3.0)) == 3.0
    with pytest.raises(MixerError, match="no real example could be scored"):
        keep_threshold([math.inf], VerifierConfig(model="m"))


def test_a_folder_model_is_identified_by_its_files(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = model_identity(str(tmp_path))
    assert model_identity(str(tmp_path)) == before
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(tmp_path)) != before
    assert model_identity("org/some-model") == {"hub": "org/some-model"}


def write_synthetic(path: Path) -> tuple[list[str], list[str]]:
    """20 passages like the real text (documentation the base never saw) and 20 of random letters."""
    rng = random.Random(0)
    alike = builtin_texts("python_docs")[200:220]
    garbage = ["".join(rng.choice("qxzjkvw ") for _ in range(300)) for _ in range(20)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in alike + garbage))
    return alike, garbage


def verifier_config(tmp_path: Path, base: Path, synthetic: Path, **verifier: object) -> Path:
    config = {
        "output_dir": str(tmp_path / "run"),
        "tokenizer": {"name": str(base)},
        "data": {
            "cache_dir": str(tmp_path / "cache"),
            "synthetic_ratio": 0.5,
            "sources": [
                {"name": "docs", "kind": "real", "builtin": "python_docs", "max_examples": 80},
                {"name": "gen", "kind": "synthetic", "path": str(synthetic)},
            ],
            "filters": {"verifier": {"model": "base", "batch_size": 8, **verifier}},
        },
        "model": {"name": str(base)},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_verifier_drops_what_the_base_model_finds_unlikely_and_caches_it(
    tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alike, garbage = write_synthetic(tmp_path / "synthetic.jsonl")
    config = load_config(verifier_config(tmp_path, base_model, tmp_path / "synthetic.jsonl"))
    corpora = build_corpora(config.data, config.tokenizer, base_model=config.model.name)
    report = {r.name: r for r in corpora.reports}
    summary = corpora.cleaning["verifier"]
    assert summary["model"] == str(base_model) and summary["synthetic_scored"] == 40
    assert summary["real_scored"] == report["docs"].held_out == len(corpora.held_out)  # the held-out texts
    assert report["docs"].unverified == 0  # real text is never filtered
    assert report["gen"].unverified == 40 - report["gen"].examples == 40 - summary["kept"]
    kept = set(corpora.train[1].source_index.tolist())  # lines 0-19 are like the real text, 20-39 random letters
    assert not kept & set(range(len(alike), len(alike) + len(garbage)))  # every random-letter passage is rejected
    # Half or more of the unseen documentation passes (11 of 20 here): the bar is the 90th percentile of just 8
    # held-out texts, and later topics of the docs differ from the first 80.
    assert len(kept & set(range(len(alike)))) >= 10

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verifier model was loaded although the cleaning entry is cached")

    monkeypatch.setattr(verifier_module.Verifier, "__init__", no_model)
    again = build_corpora(config.data, config.tokenizer, base_model=config.model.name)
    assert again.cleaning["store"] == "cached" and again.cleaning["verifier"] == summary
    assert [r.unverified for r in again.reports] == [r.unverified for r in corpora.reports]


@pytest.mark.slow
def test_a_source_the_verifier_empties_is_an_error_that_says_so(tmp_path: Path, base_model: Path) -> None:
    write_synthetic(tmp_path / "synthetic.jsonl")
    config = load_config(verifier_config(tmp_path, base_model, tmp_path / "synthetic.jsonl", max_ppl=1.0001))
    with pytest.raises(MixerError, match=r"source 'gen': no examples left after cleaning \(40 rejected by the"):
        build_corpora(config.data, config.tokenizer, base_model=config.model.name)


@pytest.mark.slow
def test_bad_verifier_settings_are_one_line_errors(tmp_path: Path, base_model: Path) -> None:
    write_synthetic(tmp_path / "synthetic.jsonl")
    path = verifier_config(tmp_path, base_model, tmp_path / "synthetic.jsonl")
    with pytest.raises(ConfigError, match=r"data.filters.verifier.quantile: must be in \[0, 1\]"):
        load_config(path, ["--data.filters.verifier.quantile", "1.5"])
    with pytest.raises(ConfigError, match="data.filters.verifier.max_ppl: must be > 0"):
        load_config(path, ["--data.filters.verifier.max_ppl", "0"])
    with pytest.raises(ConfigError, match="data.filters.verifier.model: 'base' scores with the run's base model"):
        load_config(path, ["--model.name", "null", "--model.arch", "{model_type: llama}"])
    config = load_config(path, ["--data.filters.verifier.model", str(tmp_path / "no-such-model")])
    with pytest.raises(MixerError, match="data.filters.verifier.model: cannot load"):
        build_corpora(config.data, config.tokenizer, base_model=config.model.name)


@pytest.mark.slow
def test_inspect_describes_the_verifier_with_or_without_real_text_scored(
    tmp_path: Path, base_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthmix.cli import main as synthmix

    write_synthetic(tmp_path / "synthetic.jsonl")
    path = verifier_config(tmp_path, base_model, tmp_path / "synthetic.jsonl")
    assert synthmix(["inspect", "--config", str(path), "--data.allow_repeat", "true"]) == 0
    assert "real examples scored, median" in capsys.readouterr().out
    assert (
        synthmix(
            ["inspect", "--config", str(path), "--data.allow_repeat", "true", "--data.filters.verifier.max_ppl", "1e9"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "kept 40 of 40 synthetic examples (ppl <= 1000000000.0: 1e+09) in" in out and "median" not in out

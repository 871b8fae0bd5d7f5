"""synthmix.data_mixers.torch_dataset: the exact mix as a torch IterableDataset. torchdata's StatefulDataLoader resumes
it to the row; accelerate's IterableDatasetShard splits its global layout into each rank's mixer share; a real TRL
SFTTrainer receives the configured ratio per epoch and, resumed from its checkpoint, continues the stream where it
stopped; `synthmix sft` leaves metrics.jsonl eval events and report.html."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from synthmix.cli import main
from synthmix.data_mixers.corpus import build_corpora
from synthmix.data_mixers.errors import MixerError
from synthmix.data_mixers.labels import FILLER_KIND
from synthmix.data_mixers.torch_dataset import KindCounter, MixedStream, kind_counts
from synthmix.trainer.config import load_config
from synthmix.trainer.integrations import attach_stream
from synthmix.trainer.reporting.events import METRICS, read_events

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO = Path(__file__).resolve().parents[2]
RATIO, BATCH, STEPS_SAVED = 0.3, 4, 10


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory, write_tiny_config) -> tuple[Any, Any]:
    """The tiny config (2 epochs, ratio 0.3, rows of 64 tokens, 4 rows a batch) and its corpora."""
    path = write_tiny_config(tmp_path_factory.mktemp("trl-dataset"))
    config = load_config(path, ["--output_dir", str(path.parent / "run"), "--train.report_to", "[none]"])
    return config, build_corpora(config.data, config.tokenizer)


def stream_of(mix: tuple[Any, Any], data: Any = None, **changes: Any) -> MixedStream:
    config, corpora = mix
    settings = dict(seed=config.seed, epochs=config.train.epochs, seq_len=config.train.seq_len,
                    pad_id=corpora.tokenizer.pad_token_id, rows_per_step=BATCH, provenance=True)  # fmt: skip
    return MixedStream(corpora.train, data or config.data, **{**settings, **changes})


def by_epoch(stream: MixedStream, kinds_per_step: list[list[int]]) -> list[float]:
    """Realized synthetic share of the tokens of each epoch (filler rows excluded), from per-step token kinds."""
    ends, shares, start = stream.epoch_end_steps().values(), [], 0
    for end in ends:
        tokens = torch.tensor([k for step in kinds_per_step[start:end] for k in step])
        real, synthetic = int((tokens == 0).sum()), int((tokens == 1).sum())
        shares.append(synthetic / (real + synthetic))
        start = end
    return shares


def test_a_stateful_dataloader_resumes_the_stream_at_the_next_row(mix) -> None:
    StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader  # noqa: N806

    def loader(stream: MixedStream) -> StatefulDataLoader:
        return StatefulDataLoader(stream, batch_size=BATCH, collate_fn=lambda rows: rows)

    whole = [row["sources"] for batch in loader(stream_of(mix)) for row in batch]
    first = loader(stream_of(mix))
    it = iter(first)
    head = [row["sources"] for _ in range(30) for row in next(it)]  # past the end of epoch 1 (22 steps)
    state = first.state_dict()
    assert state["dataset_state"]["rows"] == 30 * BATCH and state["dataset_state"]["epoch"] == 2
    resumed = loader(stream_of(mix))
    resumed.load_state_dict(state)
    tail = [row["sources"] for batch in resumed for row in batch]
    assert head + tail == whole and len(whole) == stream_of(mix).total_rows


def test_the_ratio_of_every_epoch_is_exact(mix) -> None:
    stream = stream_of(mix)
    rows = list(stream)
    steps = [[k for row in rows[s : s + BATCH] for k in row["kinds"]] for s in range(0, len(rows), BATCH)]
    assert len(steps) == stream.total_steps() == stream.epoch_end_steps()[2]
    assert all(abs(share - RATIO) < 0.01 for share in by_epoch(stream, steps))
    assert all(row["labels"][0] == -100 and sum(row["seq_lengths"]) == len(row["input_ids"]) for row in rows)


def test_accelerate_splits_the_global_layout_into_each_ranks_share(mix) -> None:
    from accelerate.data_loader import IterableDatasetShard

    shares = []
    for rank in range(2):
        split = IterableDatasetShard(stream_of(mix, world_size=2, layout="global", block=BATCH), batch_size=BATCH,
                                     num_processes=2, process_index=rank)  # fmt: skip
        own = stream_of(mix, rank=rank, world_size=2)
        shares.append([row["sources"] for row in split])
        assert shares[-1] == [row["sources"] for row in own]
    assert len(shares[0]) == len(shares[1])  # filler rows even the ranks out: no rank waits at an epoch's end
    epoch_rows = stream_of(mix, world_size=2).epoch_end_steps()[1] * BATCH
    pieces = [p for share in shares for row in share[:epoch_rows] for p in row]
    assert len(pieces) == len(set(pieces))  # the ranks' shares of an epoch are disjoint


def test_a_state_from_other_settings_is_refused(mix) -> None:
    state = stream_of(mix).state_at(8)
    with pytest.raises(MixerError, match="rows_per_step"):
        stream_of(mix, rows_per_step=8).load_state_dict(state)
    with pytest.raises(MixerError, match="outside this stream"):
        stream_of(mix).load_state_dict({**state, "rows": 10**9})


def test_the_counter_counts_each_row_by_the_step_that_trains_it(mix) -> None:
    # Two pieces: a real example from its start (3 tokens) and the rest of a synthetic one (2 tokens, from its
    # 5th token on: its tokens count, the example does not); then a filler row, which counts nothing.
    row = {"input_ids": [5, 6, 7, 8, 9], "labels": [-100] * 5, "seq_lengths": [3, 2], "kinds": [0, 0, 0, 1, 1],
           "sources": ["a:0:0", "b:3:4"], "starts": [0, 4], "row": 0}  # fmt: skip
    filler = {**stream_of(mix).example(), "row": 1}
    assert kind_counts(row).tolist() == [3, 2, 1, 0] and kind_counts(filler).tolist() == [0, 0, 0, 0]
    counter = KindCounter(lambda rows: [r["input_ids"] for r in rows], rows_per_step=2)
    batch = counter([row, filler, {**row, "row": 2}])  # rows 0-1: step 1; row 2: step 2, collated ahead of it
    assert batch == [row["input_ids"], filler["input_ids"], row["input_ids"]]  # the provenance is stripped
    assert counter.counted(1).tolist() == [3, 2, 1, 0] and counter.counted(2).tolist() == [6, 4, 2, 0]
    counter.forget(1)
    assert counter.counted(2).tolist() == [3, 2, 1, 0]
    plain = {k: row[k] for k in ("input_ids", "labels", "seq_lengths")}  # an eval dataset's row: as it is
    assert counter([plain]) == [plain["input_ids"]] and counter.counted(9).tolist() == [3, 2, 1, 0]


# ---------------------------------------------------------------------------------------------- SFTTrainer
class KindsCollator:
    """The trainer's collator (attach_stream's counter around TRL's), plus each token's kind (0 real, 1 synthetic,
    -1 filler) in the batch the trainer gets."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(rows)
        batch["kinds"] = torch.tensor([k for row in rows for k in row["kinds"]])[None]
        return batch


def recording_trainer(mix, tmp_path: Path, tiny_model, max_steps: int | None = None, data: Any = None):
    from trl import SFTConfig, SFTTrainer

    class Recording(SFTTrainer):
        """Keeps every micro-batch exactly as training_step receives it."""

        seen: list[tuple[list[int], list[int]]]

        def training_step(self, model, inputs, num_items_in_batch=None):
            kinds = inputs.pop("kinds")
            assert kinds.shape == inputs["input_ids"].shape  # the padding-free row, token for token
            self.seen.append((inputs["input_ids"][0].tolist(), kinds[0].tolist()))
            return super().training_step(model, inputs, num_items_in_batch)

    config, corpora = mix
    stream = stream_of(mix, data, provenance=False)  # attach_stream turns it on
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, learning_rate=0.01, max_length=None,
        padding_free=True, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
        use_cpu=True, report_to=[], save_steps=STEPS_SAVED, save_strategy="steps", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, max_steps=max_steps or -1, logging_steps=5,
    )  # fmt: skip
    model = tiny_model(corpora.tokenizer).train()
    placeholder = datasets.Dataset.from_list([stream.example()])
    trainer = Recording(model=model, args=args, train_dataset=placeholder, processing_class=corpora.tokenizer)
    trainer.seen = []
    attach_stream(trainer, stream)
    trainer.data_collator = KindsCollator(trainer.data_collator)
    return trainer, stream


@pytest.fixture(scope="module")
def uninterrupted(mix, tmp_path_factory, tiny_model):
    trainer, stream = recording_trainer(mix, tmp_path_factory.mktemp("sft"), tiny_model)
    trainer.train()
    return trainer, stream


def epochs_logged(trainer) -> list[dict[str, Any]]:
    events = read_events(Path(trainer.args.output_dir) / METRICS)
    return [{k: v for k, v in e.items() if k != "time"} for e in events if e["event"] == "epoch"]


@pytest.mark.slow
def test_sft_trainer_receives_the_configured_ratio(uninterrupted) -> None:
    trainer, stream = uninterrupted
    assert trainer.state.global_step == stream.total_steps() == len(trainer.seen)
    shares = by_epoch(stream, [kinds for _, kinds in trainer.seen])
    assert len(shares) == 2 and all(abs(share - RATIO) < 0.01 for share in shares), shares
    filler = sum(k == FILLER_KIND for _, kinds in trainer.seen for k in kinds)
    assert filler < 2 * BATCH  # at most the last step of each epoch is topped up
    # The epoch events count what training_step received (the dataloader collates ahead: counted by step).
    logged = epochs_logged(trainer)
    assert [e["step"] for e in logged] == list(stream.epoch_end_steps().values())
    assert [e["realized_synthetic_ratio"] for e in logged] == pytest.approx(shares, abs=1e-12)
    assert all(e["target_synthetic_ratio"] == RATIO and e["unit"] == "tokens" for e in logged)
    first_epoch = torch.tensor([k for _, kinds in trainer.seen[: logged[0]["step"]] for k in kinds])
    assert logged[0]["tokens_synthetic"] == int((first_epoch == 1).sum())
    assert logged[0]["tokens_real"] == int((first_epoch == 0).sum())


@pytest.mark.slow
def test_resuming_the_sft_checkpoint_continues_the_stream(uninterrupted, mix, tmp_path, tiny_model) -> None:
    first, _ = uninterrupted
    checkpoint = Path(first.args.output_dir) / f"checkpoint-{STEPS_SAVED}"
    assert (checkpoint / "synthmix_stream.json").is_file()
    second, stream = recording_trainer(mix, tmp_path, tiny_model)
    shutil.copytree(checkpoint, Path(second.args.output_dir) / checkpoint.name)
    # As a crash would leave it: the events of the whole first run, which the resume takes back to step 10's.
    shutil.copy(Path(first.args.output_dir) / METRICS, Path(second.args.output_dir) / METRICS)
    second.train(resume_from_checkpoint=str(Path(second.args.output_dir) / checkpoint.name))
    assert second.state.global_step == stream.total_steps()
    assert second.seen == first.seen[STEPS_SAVED:]  # the next batch, then every one after: no replay, no gap
    # Epoch 1 was cut at step 10: its counts before the cut came back from the checkpoint; each epoch logged once.
    assert epochs_logged(second) == epochs_logged(first)
    resumes = [e for e in read_events(Path(second.args.output_dir) / METRICS) if e["event"] == "resume"]
    assert [e["step"] for e in resumes] == [STEPS_SAVED]
    # A run that stops short of the stream (max_steps) resumes as well.
    short, _ = recording_trainer(mix, tmp_path / "short", tiny_model, max_steps=STEPS_SAVED + 2)
    shutil.copytree(checkpoint, Path(short.args.output_dir) / checkpoint.name)
    short.train(resume_from_checkpoint=str(Path(short.args.output_dir) / checkpoint.name))
    assert short.seen == first.seen[STEPS_SAVED : STEPS_SAVED + 2]
    # Settings that change the stream's length (here the ratio of the epoch to come) would leave the Trainer's
    # steps and the stream's apart: refused at the start of training, in one line.
    data = dataclasses.replace(mix[0].data, synthetic_ratio=0.5)
    third, _ = recording_trainer(mix, tmp_path / "third", tiny_model, data=data)
    shutil.copytree(checkpoint, Path(third.args.output_dir) / checkpoint.name)
    with pytest.raises(MixerError, match="the stream takes .* steps, the Trainer was set up for"):
        third.train(resume_from_checkpoint=str(Path(third.args.output_dir) / checkpoint.name))


def test_attach_stream_refuses_settings_that_would_break_the_exact_mix(mix, tmp_path, tiny_model) -> None:
    trainer, stream = recording_trainer(mix, tmp_path, tiny_model)
    trainer.args.dataloader_num_workers = 2
    with pytest.raises(MixerError, match="dataloader_num_workers: must be 0 with the stream, got 2"):
        attach_stream(trainer, stream)
    trainer.args.dataloader_num_workers, trainer.args.gradient_accumulation_steps = 0, 2
    with pytest.raises(MixerError, match="the stream has 4, the trainer takes 8 rows per step"):
        attach_stream(trainer, stream)
    trainer.args.gradient_accumulation_steps = 1
    with pytest.raises(MixerError, match="the stream was planned for 2 processes, the launch has 1"):
        attach_stream(trainer, stream_of(mix, world_size=2, layout="global", block=BATCH))
    with pytest.raises(MixerError, match="has a stream attached already"):
        attach_stream(trainer, stream)


@pytest.mark.slow
def test_synthmix_sft_trains_with_the_collapse_callback(
    mix, tmp_path: Path, write_tiny_config, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_tiny_config(tmp_path / "cfg", {"train": {"epochs": 1}})
    out = tmp_path / "sft"
    sft = ["sft", "--config", str(config_path), "--output_dir", str(out)]
    assert main([*sft, "--train.report_to", "[none]"]) == 0
    events = read_events(out / METRICS)
    evals = [e for e in events if e["event"] == "eval"]
    epoch_end = stream_of(mix).epoch_end_steps()[1]  # epoch 1 is planned the same whatever train.epochs says
    assert [e["step"] for e in evals] == [0, epoch_end]  # the baseline, and the end of the epoch
    assert [e["epoch"] for e in evals] == [0, 1]  # the stream's epochs (the Trainer's would be 0 to 1 over the run)
    (epoch,) = [e for e in events if e["event"] == "epoch"]
    assert epoch["step"] == epoch_end and abs(epoch["realized_synthetic_ratio"] - RATIO) < 0.01
    assert evals[-1]["realized_synthetic_ratio"] == epoch["realized_synthetic_ratio"]
    assert events[0]["event"] == "config" and events[-1]["event"] == "end" and events[-1]["status"] == "finished"
    assert (out / "report.html").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    card = (out / "adapter" / "README.md").read_text()  # synthmix's model card, not peft's
    assert "library_name: peft" in card and "| syn | synthetic |" in card and "Synthetic ratio per epoch" in card
    capsys.readouterr()
    assert main(sft) == 2
    assert capsys.readouterr().err.startswith(f"error: output_dir {out} already holds a run")
    assert main([*sft, "--resume", str(out / "adapter")]) == 2
    assert "is not a checkpoint-N folder of output_dir" in capsys.readouterr().err

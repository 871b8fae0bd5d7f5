"""synthmix inside the trainers people already run (transformers' `Trainer`, TRL's `SFTTrainer`).

    from synthmix.trainer.integrations import CollapseCallback, attach_stream

    trainer = SFTTrainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(CollapseCallback.from_texts(held_out_texts, tokenizer, trainer, every_steps=50))
    trainer.train()

`CollapseCallback`: the collapse hook of a synthmix run as a callback. `attach_stream` (with `StreamCallback`): the
exact mix (`data_mixers.torch_dataset.MixedStream`) as the trainer's dataset, with its epochs and exact resume.
"""

from synthmix.trainer.integrations.checkpoint_files import EVENTS_FILE
from synthmix.trainer.integrations.collapse_callback import STATE_FILE, CollapseCallback
from synthmix.trainer.integrations.stream_callback import STREAM_STATE_FILE, StreamCallback, attach_stream, mixed_stream

__all__ = [
    "EVENTS_FILE",
    "STATE_FILE",
    "STREAM_STATE_FILE",
    "CollapseCallback",
    "StreamCallback",
    "attach_stream",
    "mixed_stream",
]

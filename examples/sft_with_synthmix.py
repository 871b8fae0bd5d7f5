"""Your own TRL SFTTrainer script, with synthmix added: the exact real/synthetic mix as the training data, and
the collapse hook as a callback. Everything else (model, tokenizer, LoRA, SFTConfig) is plain transformers,
peft and TRL, as you would write it anyway.

    python examples/sft_with_synthmix.py --model Qwen/Qwen2.5-0.5B-Instruct \
        --real data/chats.jsonl --synthetic data/synthetic_chats.jsonl --ratio 0.3 --output_dir runs/my-sft
    accelerate launch --multi_gpu --num_processes N examples/sft_with_synthmix.py --model ...   (N GPUs)

Both files are JSONL with a `messages` list per line (the chat format TRL takes). What synthmix adds is
marked `# synthmix`. Afterwards: OUTPUT_DIR/metrics.jsonl (the realized ratio per epoch, the collapse
indicators at every eval, alerts), OUTPUT_DIR/report.html, and the adapter in OUTPUT_DIR/adapter.
"""

from __future__ import annotations

import argparse

import datasets
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from synthmix.data_mixers import DataConfig, SourceConfig, build_corpora
from synthmix.trainer.integrations import CollapseCallback, attach_stream, mixed_stream


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub name or local folder of an instruct model")
    parser.add_argument("--real", required=True, help="JSONL of human-written chats")
    parser.add_argument("--synthetic", required=True, help="JSONL of model-generated chats")
    parser.add_argument("--ratio", type=float, default=0.3, help="share of synthetic tokens in every epoch")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the real chats")
    parser.add_argument("--seq_len", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=-1, help="stop early (a quick try)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    training = SFTConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        learning_rate=2e-4,
        warmup_steps=10,
        logging_steps=1,
        max_steps=args.max_steps,
        report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(),  # the same script runs on a machine without a GPU
        # The stream yields packed rows of whole chats: TRL trains them padding-free, as they are.
        padding_free=True,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    # synthmix: the two corpora, tokenized once (cached under .cache/synthmix) with the model's chat template,
    # the loss on the assistant's replies; an epoch is one pass over the real chats, `ratio` of its tokens synthetic.
    data = DataConfig(
        synthetic_ratio=args.ratio,
        assistant_only_loss=True,
        sources=[
            SourceConfig(name="real", kind="real", path=args.real, messages_field="messages"),
            SourceConfig(name="synthetic", kind="synthetic", path=args.synthetic, messages_field="messages"),
        ],
    )
    corpora = build_corpora(data, tokenizer=tokenizer)  # synthmix
    stream = mixed_stream(corpora, data, training, seq_len=args.seq_len, epochs=args.epochs)  # synthmix
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=datasets.Dataset.from_list([stream.example()]),  # SFTTrainer takes `datasets` objects
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    attach_stream(trainer, stream)  # synthmix: the exact mix as the training data, resumable to the row
    trainer.add_callback(CollapseCallback(corpora.held_out, tokenizer, trainer))  # synthmix: the collapse hook
    trainer.train()
    trainer.save_model(f"{args.output_dir}/adapter")


if __name__ == "__main__":
    main()

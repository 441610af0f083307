"""LoRITa inside the Hugging Face Trainer: factorize a transformer's attention projections,
train, merge, and save with ``save_pretrained`` (the merged model is the original class).

``TrainingArguments(weight_decay=...)`` decays every parameter except biases and LayerNorm
weights, which includes the factors — the penalty LoRITa relies on. Multi-GPU: launch the same
script with ``torchrun``/``accelerate``; the Trainer wraps the model in DDP itself. Merge after
``trainer.train()`` on the main process (``trainer.is_world_process_zero()``).

    python examples/hf_trainer_lorita.py OUT_DIR     # a tiny BERT, a few CPU steps on random data
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from torch.utils.data import Dataset

import lorita

TARGETS = ["query", "key", "value", "attention.output.dense"]  # BERT's attention projections


class RandomTokens(Dataset):
    def __init__(self, n: int = 32, length: int = 8, vocab: int = 50, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> transformers.BertForSequenceClassification:
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


def run(out_dir: str | Path, steps: int = 4, seed: int = 0):
    """Train ``steps`` steps; returns ``(factorized model, merged model)`` and saves the merged one
    to ``out_dir/merged`` with ``save_pretrained``."""
    transformers.set_seed(seed)
    model = lorita.factorize(tiny_bert(), depth=2, target_modules=TARGETS)
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
        weight_decay=1e-2, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=seed,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(seed=seed))
    trainer.train()
    merged = lorita.merge(trainer.model).eval()
    if trainer.is_world_process_zero():
        merged.save_pretrained(Path(out_dir) / "merged")
    return trainer.model.eval(), merged


if __name__ == "__main__":
    fact, dense = run(sys.argv[1] if len(sys.argv) > 1 else "runs/hf_trainer")
    print(lorita.select_ranks(dense, lorita.EnergyThreshold(0.9), target_modules=TARGETS))

"""The baseline of bench/ttfs.py: the minimal TRL script a user would write for the same LoRA SFT step.

accelerate launch --cpu --num_processes 1 bench/_ttfs_trl.py MODEL_DIR DATA_JSON OUT_DIR CUTOFF BATCH STEPS
"""

import sys

from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

model_dir, data, out, cutoff, batch, steps = sys.argv[1:7]


def to_prompt_completion(row):
    prompt = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": row["output"]}],
    }


dataset = load_dataset("json", data_files=data, split="train")
dataset = dataset.map(to_prompt_completion, remove_columns=dataset.column_names)
args = SFTConfig(
    output_dir=out,
    max_steps=int(steps),
    per_device_train_batch_size=int(batch),
    max_length=int(cutoff),
    learning_rate=1e-4,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    bf16=False,
)  # fp32 on CPU, as kubetune's precision auto (TRL would autocast bf16: 7 min a step here)
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
SFTTrainer(model=model_dir, args=args, train_dataset=dataset, peft_config=peft).train()

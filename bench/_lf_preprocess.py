"""Runs INSIDE the LLaMA-Factory venv: time LLaMA-Factory's data preprocessing (read → convert → tokenize).

    <lf-venv>/bin/python bench/_lf_preprocess.py CONFIG.json RESULT.json [IDS.json]

Uses LLaMA-Factory's own argument parser, tokenizer loader, template and ``get_dataset`` (what its SFT
workflow calls before building a model). Only the ``get_dataset`` call is timed (wall and CPU seconds of all the process's threads). With IDS.json, the
token ids it produced are written there (after timing) for the equality check.
"""

import json
import sys
import time

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        args = json.load(fh)
    model_args, data_args, training_args, _finetuning_args, _gen = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    started, cpu_started = time.perf_counter(), time.process_time()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    ds = module["train_dataset"]
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump({"seconds": seconds, "cpu_seconds": cpu_seconds, "rows_out": len(ds)}, fh)
    if len(sys.argv) > 3:
        rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in ds]
        with open(sys.argv[3], "w", encoding="utf-8") as fh:
            json.dump(rows, fh)


if __name__ == "__main__":
    main()

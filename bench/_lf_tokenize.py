"""Runs INSIDE the LLaMA-Factory venv: tokenize a dataset exactly as `llamafactory-cli train` would, dump JSON.

    <lf-venv>/bin/python bench/_lf_tokenize.py CONFIG.yaml OUT.json

Uses LLaMA-Factory's own argument parser, tokenizer loader, template and ``get_dataset`` (the calls its
SFT workflow makes before building the model), so the token ids are the ones its training sees.
"""

import json
import sys

import yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer


def main() -> None:
    config_path, out_path = sys.argv[1], sys.argv[2]
    with open(config_path, encoding="utf-8") as fh:
        args = yaml.safe_load(fh)
    args["output_dir"] = args["output_dir"] + "-tokenize"
    model_args, data_args, training_args, _finetuning_args, _gen = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    ds = module["train_dataset"]
    rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in ds]
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(rows, fh)


if __name__ == "__main__":
    main()

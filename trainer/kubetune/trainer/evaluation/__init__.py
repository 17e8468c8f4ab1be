"""The evaluation gate (``spec.evaluation``): after training, the base and the trained model side by side.

* :mod:`.measure` — what is measured on one model: eval loss (token-weighted, the training's own loss) and
  perplexity, greedy answers to the prompt sets, their rule score and reward-model score;
* :mod:`.gate` — pure: the gate's conditions over the two models' scores, and whether to promote;
* :mod:`.run` — loads the prompts before training, then both models after it, and returns the result the
  runner writes into the manifest and the termination message.
"""

from kubetune.trainer.evaluation.gate import Check, EvaluationResult, Scores, decide
from kubetune.trainer.evaluation.run import PromptSet, evaluate, load_prompt_sets

__all__ = ["Check", "EvaluationResult", "PromptSet", "Scores", "decide", "evaluate", "load_prompt_sets"]

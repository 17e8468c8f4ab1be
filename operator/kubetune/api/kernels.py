"""The attention implementation and fused kernels a job may ask for, and what each one needs.

Pure facts shared by the spec validation (a CPU job cannot ask for a CUDA kernel) and the trainer (which
checks the installed packages and the GPU, and resolves ``auto``).
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_CHOICES = ("auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
KERNEL_CHOICES = ("liger", "chunked_loss")


@dataclass(frozen=True)
class Requirement:
    """What an attention implementation or kernel needs to run."""

    cuda: bool  # needs an NVIDIA GPU
    module: str | None  # the Python module that must be importable
    install: str  # what to do when it is missing
    min_capability: tuple[int, int] = (0, 0)  # lowest CUDA compute capability
    max_capability: tuple[int, int] = (99, 99)
    hardware: str = ""  # the GPUs it runs on, in words


REQUIREMENTS: dict[str, Requirement] = {
    "eager": Requirement(cuda=False, module=None, install=""),
    "sdpa": Requirement(cuda=False, module=None, install=""),
    "flex_attention": Requirement(cuda=False, module=None, install=""),
    "flash_attention_2": Requirement(
        cuda=True,
        module="flash_attn",
        min_capability=(8, 0),
        hardware="Ampere or newer GPUs (A100, L40S, H100, ...)",
        install="install FlashAttention 2 in the trainer image (pip install flash-attn --no-build-isolation)",
    ),
    "flash_attention_3": Requirement(
        cuda=True,
        module="flash_attn_interface",
        min_capability=(9, 0),
        max_capability=(9, 9),
        hardware="Hopper GPUs (H100, H200) only",
        install="FlashAttention 3 runs on Hopper GPUs (H100/H200) only; build it from the hopper/ folder of "
        "the flash-attention sources into the trainer image",
    ),
    "liger": Requirement(
        cuda=True,
        module="liger_kernel",
        install="install Liger's kernels in the trainer image (pip install 'kubetune[kernels]', i.e. liger-kernel)",
    ),
    "chunked_loss": Requirement(cuda=False, module=None, install=""),
}


def spec_problems(
    attention: str, kernels: list[str], *, gpus_per_node: int | None, strategy: str
) -> list[tuple[tuple[str, ...], str]]:
    """Field problems visible from the spec alone (the trainer checks packages and the GPU model).

    ``gpus_per_node`` is None for ``kubetune run`` (the local machine decides) and 0 for a CPU job.
    """
    problems: list[tuple[tuple[str, ...], str]] = []
    cpu_job = gpus_per_node == 0
    if cpu_job and REQUIREMENTS.get(attention, REQUIREMENTS["sdpa"]).cuda:
        problems.append(
            (
                ("training", "attention"),
                f"{attention} needs NVIDIA GPUs but resources.gpusPerNode is 0; use sdpa or auto",
            )
        )
    seen: set[str] = set()
    for i, name in enumerate(kernels):
        if name in seen:
            problems.append((("training", "kernels", str(i)), f"{name} is listed twice"))
        seen.add(name)
        if cpu_job and REQUIREMENTS[name].cuda:
            problems.append(
                (
                    ("training", "kernels", str(i)),
                    f"{name} needs NVIDIA GPUs but resources.gpusPerNode is 0; remove it for a CPU job",
                )
            )
    if "chunked_loss" in seen and "liger" in seen:
        problems.append(
            (
                ("training", "kernels"),
                "liger already fuses the LM head with the loss; list liger or chunked_loss, not both",
            )
        )
    if "chunked_loss" in seen and strategy == "fsdp":
        problems.append(
            (
                ("training", "kernels"),
                "chunked_loss calls the LM head outside the sharded forward; use it with ddp or deepspeed",
            )
        )
    return problems
